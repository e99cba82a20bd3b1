"""Cost of the vision-dependency computation in the trainer: k3 (the official code) vs the exact full-vocabulary KL.

Every variant starts from what the trainer's two forward passes (real image, masked image) have produced for one
micro-batch: the final hidden states at the response positions, [B, T, H] in bf16 for each pass, next to the LM
head [V, H]; and ends with a float32 dependency [B, T] (plus the old log-probs):

  k3        what the trainer runs for k3: TRL's fused log-prob head (trl.kernels.ChunkedLogProbFunction, with
            the entropy GRPOTrainer asks for) on each pass's hidden states, then vppo.algorithm.k3_dependency
  kl        what the trainer runs for kl (vppo.training.exact_kl): the same two fused-head calls (the old
            log-probs; TRL's head still scores the masked pass) and kl_from_hidden, the exact KL with the LM
            head applied to KL_CHUNK_BYTES worth of positions at a time
  kl_step   kl_from_hidden alone: the KL's own working set. The kl path's peak is the larger of this and
            TRL's head; on CUDA that head is a Triton kernel peaking at its 4096 x 32768 bf16 tile (256 MiB)
  kl_naive  both passes' logits [B, T, V] in float32, log_softmax, sum p (log p - log q): the obvious code;
            skipped (with a message) when it would need more than --naive-max-gib

Peak extra memory is measured per variant in its own subprocess: on CUDA torch.cuda.max_memory_allocated minus
the allocation after the inputs were built, on CPU the process's peak RSS (ru_maxrss) minus its resident size
after the inputs were built (inputs are filled a few rows at a time so no large temporary inflates either).
The inputs count for every variant: k3's forward passes hold each pass's final hidden states too (all prompt
and response positions, [B, L, H]) while its head runs. What the kl path holds beyond k3 in the trainer, the real
pass's response hidden states through the masked forward until its KL (B * T * H * 2 bytes), is added in a
second ratio, an upper bound (they are freed before TRL's head scores the masked pass). Time is the median of --repeats runs after --warmup runs.

Default shape: the paper's, 8 x 2048 tokens x 152064 vocabulary with hidden size 3584 (Qwen2.5-VL-7B), on
either device (the inputs are 117 MB per pass; the LM head 1.1 GB). Measured at that shape on the 2-core CPU
machine (torch 2.13, TRL 1.16, 2 threads, --repeats 1 --warmup 0, while other work kept the load at 5-7, so
the times are inflated and only roughly comparable):

  k3        time  426 s   peak extra memory 1801 MiB   (TRL's head in its torch form: float32 copies of its tile)
  kl        time 1049 s   peak extra memory 1803 MiB   kl/k3 memory 1.001 (at most 1.063 with the held hidden states)
  kl_step   time  549 s   peak extra memory  228 MiB   0.89 x KL_CHUNK_BYTES
  kl_naive  skipped: ~41.8 GiB beyond its inputs

On CUDA TRL's head runs as a Triton kernel whose only large buffer is its 4096 x 32768 bf16 logits tile
(256 MiB, plus its [N, H] copy of the valid hidden states); the KL step stays under KL_CHUNK_BYTES, that tile's
size (228 MiB measured above), so the kl path's peak should match k3's there too: not yet measured (no GPU).

    python bench/bench_dependency.py [--device cpu|cuda] [--batch B] [--tokens T] [--vocab V] [--hidden H]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from vppo.algorithm import k3_dependency
from vppo.training.exact_kl import KL_CHUNK_BYTES, kl_chunk_positions, kl_from_hidden

VARIANTS = ("k3", "kl", "kl_step", "kl_naive")
#: sampling temperature of the bench (the paper's is 1.0; any value exercises the same code)
TEMPERATURE = 1.0


def _fused_head_logps(hidden: torch.Tensor, head: torch.nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) [B, T] float32 through TRL's fused LM head, called as GRPOTrainer's patched forward calls it."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    flat = hidden.reshape(-1, hidden.shape[-1])
    if _use_triton(flat.device):  # there the patched forward scores a copy of the valid positions only
        flat = flat[torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)]
    logps, *_ = ChunkedLogProbFunction.apply(flat, head.weight, head.bias, tokens.reshape(-1), TEMPERATURE,
                                             _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy"))
    return logps.view(tokens.shape)


def _k3(real, masked, head, tokens, mask):
    old = _fused_head_logps(real, head, tokens)
    return k3_dependency(old, _fused_head_logps(masked, head, tokens), mask)


def _kl(real, masked, head, tokens, mask):
    old = _fused_head_logps(real, head, tokens)  # noqa: F841 (the trainer's old log-probs)
    dependency = kl_from_hidden(real, masked, mask, head, TEMPERATURE)  # in the masked pass's hook, before its head
    _fused_head_logps(masked, head, tokens)
    return dependency


def _kl_step(real, masked, head, tokens, mask):
    return kl_from_hidden(real, masked, mask, head, TEMPERATURE)


def _kl_naive(real, masked, head, tokens, mask):
    log_p = torch.log_softmax(head(real).float() / TEMPERATURE, dim=-1)
    log_q = torch.log_softmax(head(masked).float() / TEMPERATURE, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * mask


RUNNERS = {"k3": _k3, "kl": _kl, "kl_step": _kl_step, "kl_naive": _kl_naive}


def naive_bytes(args) -> int:
    """What kl_naive needs beyond its inputs: the bf16 logits and four float32 [B, T, V] tensors at its peak."""
    return args.batch * args.tokens * args.vocab * (2 + 4 * 4)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_inputs(args, device):
    """Hidden states of both passes, the LM head, tokens and mask; filled a few rows at a time (no big temporary).

    Logit scale ~2.5 (head weights of std 2.5 / sqrt(H) on unit hidden states); the masked pass's hidden states
    are the real ones plus noise of std 0.3, so the two distributions differ as a partly masked image would.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=torch.bfloat16)
    head.requires_grad_(False)
    for start in range(0, args.vocab, 4096):
        rows = head.weight[start:start + 4096]
        rows.copy_(torch.randn(rows.shape, generator=gen, device=device) * (2.5 / args.hidden ** 0.5))
    shape = (args.batch, args.tokens, args.hidden)
    real = torch.empty(shape, dtype=torch.bfloat16, device=device)
    masked = torch.empty(shape, dtype=torch.bfloat16, device=device)
    for b in range(args.batch):
        for start in range(0, args.tokens, 256):
            n = min(256, args.tokens - start)
            noise = torch.randn((n, args.hidden), generator=gen, device=device)
            real[b, start:start + n] = noise.bfloat16()
            masked[b, start:start + n] = (noise + 0.3 * torch.randn((n, args.hidden), generator=gen,
                                                                     device=device)).bfloat16()
    tokens = torch.randint(0, args.vocab, shape[:2], generator=gen, device=device)
    mask = torch.ones(shape[:2], device=device)
    return real, masked, head, tokens, mask


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_child(args) -> dict:
    device = torch.device(args.device)
    inputs = _make_inputs(args, device)
    runner = RUNNERS[args.child]
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _resident_bytes()
    times = []
    with torch.no_grad():
        for _ in range(args.warmup + args.repeats):
            start = time.perf_counter()
            dep = runner(*inputs)
            _sync(device)
            times.append(time.perf_counter() - start)
            checksum = float(dep.double().sum())
            del dep
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()) - base
    return {"variant": args.child, "time_s": statistics.median(times[args.warmup:]), "peak_extra_bytes": int(peak),
            "dependency_sum": checksum}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="responses in the micro-batch")
    parser.add_argument("--tokens", type=int, default=2048, help="response tokens per response")
    parser.add_argument("--vocab", type=int, default=152064, help="Qwen2.5-VL's padded vocabulary")
    parser.add_argument("--hidden", type=int, default=3584, help="hidden size (Qwen2.5-VL-7B)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3 on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1 on CUDA, 0 on CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--naive-max-gib", type=float, default=4.0,
                        help="skip kl_naive when it would need more than this (the machine may be shared)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.repeats = args.repeats if args.repeats is not None else (3 if on_cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (1 if on_cuda else 0)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    shared = ["--device", args.device, "--batch", str(args.batch), "--tokens", str(args.tokens), "--vocab",
              str(args.vocab), "--hidden", str(args.hidden), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    held = args.batch * args.tokens * args.hidden * 2  # the real pass's response hidden states (bf16)
    print(f"# device={args.device} shape={args.batch}x{args.tokens} tokens x {args.vocab} vocab, hidden {args.hidden}: "
          f"{held / 2**20:.0f} MiB of bf16 hidden states per pass; KL chunk "
          f"{kl_chunk_positions(args.vocab, torch.bfloat16)} positions ({KL_CHUNK_BYTES / 2**20:.0f} MiB); torch "
          f"{torch.__version__}, threads={torch.get_num_threads()}, repeats={args.repeats}, warmup={args.warmup}")
    results = {}
    for variant in args.variants.split(","):
        if variant == "kl_naive" and naive_bytes(args) > args.naive_max_gib * 2**30:
            print(f"{variant:<9} skipped: needs ~{naive_bytes(args) / 2**30:.1f} GiB beyond its inputs "
                  f"(> --naive-max-gib {args.naive_max_gib:g})")
            continue
        done = subprocess.run([sys.executable, __file__, *shared, "--child", variant], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{variant}: FAILED (rc {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            continue
        results[variant] = r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{variant:<9} time {r['time_s']:9.3f} s   peak extra memory {r['peak_extra_bytes'] / 2**20:9.1f} MiB"
              f"   (dependency sum {r['dependency_sum']:.6g})", flush=True)
    ratio = lambda a, b, key: results[a][key] / max(results[b][key], 1e-12)  # noqa: E731
    if {"k3", "kl"} <= results.keys():
        conservative = (results["kl"]["peak_extra_bytes"] + held) / max(results["k3"]["peak_extra_bytes"], 1)
        print(f"kl/k3:       time {ratio('kl', 'k3', 'time_s'):.3f}   memory {ratio('kl', 'k3', 'peak_extra_bytes'):.3f}"
              f"   (at most {conservative:.3f} with the real pass's held hidden states)")
    if "kl_step" in results:
        print(f"kl_step:     peak extra memory / KL_CHUNK_BYTES {results['kl_step']['peak_extra_bytes'] / KL_CHUNK_BYTES:.3f}"
              "   (on CUDA TRL's head peaks at its KL_CHUNK_BYTES tile)")
    if {"kl_naive", "kl"} <= results.keys():
        print(f"kl/kl_naive: time {ratio('kl', 'kl_naive', 'time_s'):.3f}   "
              f"memory {ratio('kl', 'kl_naive', 'peak_extra_bytes'):.3f}")
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
