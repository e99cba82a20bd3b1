"""avg@k sampling on vLLM: one request with n=k per question (``vppo_vllm``) vs k cloned n=1 requests (what
lmms-eval's own vLLM backend sends), on ONE engine, same prompts, side by side. Needs vLLM and a GPU.

Both variants build their prompts with ``VPPOVLLMModel.build_request`` (the checkpoint's chat template, images
resized by the protocol) and run after one warm-up batch. vLLM's automatic prefix caching (on by default)
already shares part of the clones' prefill, so the ratio is the saving left over it; ``--no-prefix-caching``
shows the saving without it.

    python bench/bench_eval_vllm.py --model CKPT --data EVAL_DATA --benchmark geo3k --questions 128 [--k 8]
"""

from __future__ import annotations

import argparse
import os
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--benchmark", default="geo3k")
    parser.add_argument("--questions", type=int, default=128)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--tensor-parallel-size", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    args = parser.parse_args()

    import vllm
    from vllm import SamplingParams

    from vppo.evaluation.vllm_adapter import VPPOVLLMModel

    adapter = VPPOVLLMModel(args.model, tensor_parallel_size=args.tensor_parallel_size,
                            max_new_tokens=args.max_new_tokens, enable_prefix_caching=not args.no_prefix_caching)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, n=args.k)
    jobs = jobs_from_data(args.data, args.benchmark, args.questions, sampling)
    grouped = [adapter.build_request(job) for job in jobs]
    one = Sampling(max_new_tokens=args.max_new_tokens, n=1)
    cloned = []
    for job in jobs:
        for j in range(args.k):
            clone = GenerationJob(job.text, job.images, one, key=job.key + (j,))
            cloned.append(adapter.build_request(clone))
    warm = [adapter.build_request(GenerationJob(j.text, j.images, Sampling(max_new_tokens=16, n=1), key=j.key))
            for j in jobs[:8]]
    timed(adapter.engine, *map(list, zip(*warm)))
    if not args.no_prefix_caching:
        adapter.engine.reset_prefix_cache()
    t_n, tok_n = timed(adapter.engine, *map(list, zip(*grouped)))
    if not args.no_prefix_caching:
        adapter.engine.reset_prefix_cache()
    t_c, tok_c = timed(adapter.engine, *map(list, zip(*cloned)))
    print(f"vllm {vllm.__version__}, {args.model}, {args.benchmark} x {len(jobs)} questions x k={args.k}, "
          f"tp={adapter.tensor_parallel_size}, prefix caching {'off' if args.no_prefix_caching else 'on'}, "
          f"GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}")
    print(f"{'variant':<26} {'seconds':>8} {'tokens':>9} {'tokens/s':>9}")
    print(f"{'n=k per question':<26} {t_n:8.1f} {tok_n:9d} {tok_n / t_n:9.0f}")
    print(f"{'k cloned n=1 requests':<26} {t_c:8.1f} {tok_c:9d} {tok_c / t_c:9.0f}")
    print(f"n=k vs clones: {t_c / t_n:.2f}x wall-clock speed-up; "
          f"{(tok_n / t_n) / (tok_c / t_c):.2f}x tokens/s (SamplingParams class {SamplingParams.__name__})")


if __name__ == "__main__":
    main()
