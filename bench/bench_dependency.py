"""Cost of the vision-dependency computation: k3 vs chunked full-vocabulary KL vs naive full-vocabulary KL.

Every variant starts from what the masked forward pass leaves behind, bf16 logits [B, T, V] for the real
and the masked image, and ends with a float32 dependency [B, T]:

  k3          sampled-token log-probs gathered from both logits in token chunks (what a trainer computes
              anyway), then vppo.algorithm's k3 estimator (the official code's choice)
  kl_chunked  vppo.algorithm.token_vision_dependency(estimator="kl"), chunked over tokens
  kl_naive    log_softmax of both whole tensors in float32, then sum p (log p - log q): the obvious code

Each variant runs in its own subprocess so peak memory is its own: on CUDA torch.cuda.max_memory_allocated
minus the inputs, on CPU the growth of the process's peak RSS (resource.getrusage ru_maxrss) over the
peak after the inputs were built. Time is the median of --repeats runs after one warm-up.

Default shape: 8 x 2048 tokens x 152064 vocab on CUDA (5 GB of bf16 logits per tensor). On CPU the
default is 1 x 1024 tokens (the naive variant then needs ~5 GB and the whole run takes about a minute
on 2 cores); pass --batch/--tokens/--vocab to change it.

    python bench/bench_dependency.py [--device cpu|cuda] [--batch B] [--tokens T] [--vocab V]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from vppo.algorithm import token_vision_dependency

VARIANTS = ("k3", "kl_chunked", "kl_naive")


def _sampled_logp(logits: torch.Tensor, tokens: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """log pi(token) [B, T] float32 from bf16 logits [B, T, V], a float32 chunk of rows at a time."""
    flat, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], chunk_tokens):
        rows = flat[start:start + chunk_tokens].float()
        picked = rows.gather(1, flat_tokens[start:start + chunk_tokens, None]).squeeze(1)
        out[start:start + chunk_tokens] = picked - torch.logsumexp(rows, dim=-1)
    return out.reshape(tokens.shape)


def _k3(real, masked, tokens, mask, chunk_tokens):
    logp = _sampled_logp(real, tokens, chunk_tokens)
    masked_logp = _sampled_logp(masked, tokens, chunk_tokens)
    return token_vision_dependency(logp, masked_logp, mask, estimator="k3")


def _kl_chunked(real, masked, tokens, mask, chunk_tokens):
    return token_vision_dependency(real, masked, mask, estimator="kl", chunk_tokens=chunk_tokens)


def _kl_naive(real, masked, tokens, mask, chunk_tokens):
    log_p = torch.log_softmax(real.float(), dim=-1)
    log_q = torch.log_softmax(masked.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * mask


RUNNERS = {"k3": _k3, "kl_chunked": _kl_chunked, "kl_naive": _kl_naive}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_inputs(args, device):
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.tokens, args.vocab)
    real = torch.empty(shape, dtype=torch.bfloat16, device=device)
    masked = torch.empty(shape, dtype=torch.bfloat16, device=device)
    # Fill 16 rows at a time: a larger float32 temporary would raise the baseline peak above what the
    # cheaper variants need, and their own peak would then read as zero.
    for b in range(args.batch):
        for start in range(0, args.tokens, 16):
            n = min(16, args.tokens - start)
            noise = torch.randn((n, args.vocab), generator=gen, device=device) * 2
            real[b, start:start + n] = noise.bfloat16()
            masked[b, start:start + n] = (noise + 0.5 * torch.randn((n, args.vocab), generator=gen, device=device)).bfloat16()
    tokens = torch.randint(0, args.vocab, shape[:2], generator=gen, device=device)
    mask = torch.ones(shape[:2], device=device)
    return real, masked, tokens, mask


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_child(args) -> dict:
    device = torch.device(args.device)
    real, masked, tokens, mask = _make_inputs(args, device)
    runner = RUNNERS[args.child]
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss_bytes()
    times = []
    for _ in range(args.repeats + 1):  # first run is the warm-up
        start = time.perf_counter()
        dep = runner(real, masked, tokens, mask, args.chunk_tokens)
        _sync(device)
        times.append(time.perf_counter() - start)
        checksum = float(dep.double().sum())
        del dep
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()) - base
    return {"variant": args.child, "time_s": statistics.median(times[1:]), "peak_extra_bytes": int(peak),
            "dependency_sum": checksum}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 8 on CUDA, 1 on CPU")
    parser.add_argument("--tokens", type=int, default=None, help="default 2048 on CUDA, 1024 on CPU")
    parser.add_argument("--vocab", type=int, default=152064, help="Qwen2.5-VL's padded vocabulary")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.batch = args.batch or (8 if on_cuda else 1)
    args.tokens = args.tokens or (2048 if on_cuda else 1024)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    shared = ["--device", args.device, "--batch", str(args.batch), "--tokens", str(args.tokens),
              "--vocab", str(args.vocab), "--chunk-tokens", str(args.chunk_tokens), "--repeats", str(args.repeats)]
    print(f"# device={args.device} shape={args.batch}x{args.tokens}x{args.vocab} bf16 logits "
          f"({args.batch * args.tokens * args.vocab * 2 / 2**30:.2f} GiB per tensor), chunk={args.chunk_tokens}, "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}")
    results = {}
    for variant in args.variants.split(","):
        done = subprocess.run([sys.executable, __file__, *shared, "--child", variant], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{variant}: FAILED (rc {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            continue
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:<11} time {r['time_s']:8.3f} s   peak extra memory {r['peak_extra_bytes'] / 2**20:10.1f} MiB"
              f"   (dependency sum {r['dependency_sum']:.4g})")
    ratio = lambda a, b, key: results[a][key] / max(results[b][key], 1e-12)  # noqa: E731
    if {"kl_chunked", "kl_naive"} <= results.keys():
        print(f"chunked/naive: time {ratio('kl_chunked', 'kl_naive', 'time_s'):.3f}  "
              f"memory {ratio('kl_chunked', 'kl_naive', 'peak_extra_bytes'):.4f}")
    if {"k3", "kl_chunked"} <= results.keys():
        print(f"k3/chunked:    time {ratio('k3', 'kl_chunked', 'time_s'):.3f}  "
              f"memory {ratio('k3', 'kl_chunked', 'peak_extra_bytes'):.4f}")
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
