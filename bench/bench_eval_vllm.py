"""avg@k sampling speed, side by side in one run: vLLM with one n=k request per question (``vppo_vllm``) vs k
cloned n=1 requests (what lmms-eval's own vLLM backend sends) on ONE engine, and transformers ``generate``
(``vppo_hf``, ``num_return_sequences=k``) on the same questions. Runs on CPU (vLLM's CPU build, the
``.venv-vllm`` environment) and on GPUs.

Every variant builds its prompts through the adapters (the checkpoint's chat template, images resized by the
protocol) and runs after a warm-up batch. vLLM's automatic prefix caching (on by default) already shares part
of the clones' prefill, so that ratio is the saving left over it; ``--no-prefix-caching`` shows it without.
Without ``--model``/``--data`` it builds ``vppo fetch-model tiny-vllm`` and fixture data in a temporary folder.

    .venv-vllm/bin/python bench/bench_eval_vllm.py [--model CKPT --data EVAL_DATA] [--benchmark geo3k]
        [--questions 16] [--k 8] [--max-new-tokens 32] [--out bench/results/eval_vllm_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from vppo.evaluation.protocol import Sampling
from vppo.evaluation.requests import GenerationJob


def jobs_from_data(data: str, benchmark: str, questions: int, sampling: Sampling) -> list[GenerationJob]:
    from vppo.data.eval_data import scan_benchmark
    from vppo.evaluation.tasklib import doc_to_visual

    return [GenerationJob(row.prompt, doc_to_visual({"image_paths": row.images}), sampling,
                          key=(benchmark, "test", row.row_id))
            for row in scan_benchmark(data, benchmark).rows[:questions]]


def timed(engine, prompts, params) -> tuple[float, int]:
    started = time.perf_counter()
    outputs = engine.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return elapsed, sum(len(c.token_ids) for o in outputs for c in o.outputs)


def vllm_variants(args, model: str, jobs: list[GenerationJob]) -> dict:
    """Seconds and sampled tokens of n=k requests and of k cloned requests, one engine."""
    from vppo.evaluation.vllm_adapter import VPPOVLLMModel

    adapter = VPPOVLLMModel(model, tensor_parallel_size=args.tensor_parallel_size, max_new_tokens=args.max_new_tokens,
                            enable_prefix_caching=not args.no_prefix_caching)
    one = Sampling(max_new_tokens=args.max_new_tokens, n=1)
    grouped = [adapter.build_request(job) for job in jobs]
    cloned = [adapter.build_request(GenerationJob(job.text, job.images, one, key=job.key + (j,)))
              for job in jobs for j in range(args.k)]
    warm = [adapter.build_request(GenerationJob(j.text, j.images, Sampling(max_new_tokens=8, n=1), key=j.key))
            for j in jobs[:8]]
    timed(adapter.engine, *map(list, zip(*warm)))
    results = {}
    for name, requests in (("vllm_n_k", grouped), ("vllm_clones", cloned)):
        if not args.no_prefix_caching:
            adapter.engine.reset_prefix_cache()
        seconds, tokens = timed(adapter.engine, *map(list, zip(*requests)))
        results[name] = {"seconds": round(seconds, 3), "tokens": tokens}
    results["tensor_parallel_size"] = adapter.tensor_parallel_size
    del adapter
    return results


def hf_variant(args, model: str, jobs: list[GenerationJob]) -> dict:
    """Seconds and sampled tokens of transformers generate, ``--hf-batch-size`` questions per call."""
    from vppo.evaluation.lmms_adapter import VPPOHFModel

    hf = VPPOHFModel(model, batch_size=args.hf_batch_size, max_new_tokens=args.max_new_tokens, dtype="float32")
    hf._generate(jobs[:1])  # warm-up
    started, tokens = time.perf_counter(), 0
    for start in range(0, len(jobs), args.hf_batch_size):
        for samples in hf._generate(jobs[start:start + args.hf_batch_size]):
            tokens += sum(s.token_counts.output_tokens for s in samples)
    return {"hf_generate": {"seconds": round(time.perf_counter() - started, 3), "tokens": tokens}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: build tiny-vllm in a temporary folder)")
    parser.add_argument("--data", default=None, help="prepared eval data (default: fixtures in a temporary folder)")
    parser.add_argument("--benchmark", default="geo3k")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--no-hf", action="store_true", help="vLLM variants only")
    parser.add_argument("--tensor-parallel-size", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; CPU machines are shared

    import torch
    import vllm

    with tempfile.TemporaryDirectory() as tmp:
        model, data = args.model, args.data
        if model is None:
            from vppo.data.models import fetch_model

            model = str(fetch_model("tiny-vllm", Path(tmp) / "model"))
        if data is None:
            from vppo.data.eval_data import prepare_eval_data

            data = str(prepare_eval_data("fixtures", Path(tmp) / "data", n_rows=args.questions))
        jobs = jobs_from_data(data, args.benchmark, args.questions, Sampling(max_new_tokens=args.max_new_tokens, n=args.k))
        figures = vllm_variants(args, model, jobs)
        if not args.no_hf:
            figures.update(hf_variant(args, model, jobs))

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"vllm {vllm.__version__}, torch {torch.__version__}, {device}; {model if args.model else 'tiny-vllm'}, "
          f"{args.benchmark} x {len(jobs)} questions x k={args.k}, {args.max_new_tokens} new tokens max, "
          f"tp={figures['tensor_parallel_size']}, prefix caching {'off' if args.no_prefix_caching else 'on'}")
    print(f"{'variant':<28} {'seconds':>8} {'tokens':>8} {'tokens/s':>9}")
    labels = {"vllm_n_k": "vLLM, one n=k request", "vllm_clones": "vLLM, k cloned requests",
              "hf_generate": "transformers generate"}
    for key, label in labels.items():
        if key in figures:
            f = figures[key]
            print(f"{label:<28} {f['seconds']:8.2f} {f['tokens']:8d} {f['tokens'] / f['seconds']:9.0f}")

    def rate(key):
        return figures[key]["tokens"] / figures[key]["seconds"]

    figures["ratios"] = {"clones_over_n_k_seconds": round(figures["vllm_clones"]["seconds"] / figures["vllm_n_k"]["seconds"], 2),
                         "n_k_over_clones_tokens_per_s": round(rate("vllm_n_k") / rate("vllm_clones"), 2)}
    if "hf_generate" in figures:
        figures["ratios"]["vllm_n_k_over_hf_tokens_per_s"] = round(rate("vllm_n_k") / rate("hf_generate"), 2)
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in figures["ratios"].items()))
    if args.out:
        from vppo.fileio import write_json_atomic

        write_json_atomic(args.out, {"device": device, "vllm": vllm.__version__, "torch": torch.__version__,
                                     "model": args.model or "tiny-vllm", "benchmark": args.benchmark,
                                     "questions": len(jobs), "k": args.k, "max_new_tokens": args.max_new_tokens,
                                     **figures})


if __name__ == "__main__":
    main()
