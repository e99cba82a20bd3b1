"""``vppo eval CHECKPOINT --data DIR --benchmarks paper --out DIR``: avg@k through lmms-eval (the avg@8 protocol, README "Evaluation")."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vppo.catalog import resolve_benchmarks
from vppo.errors import InputError
from vppo.evaluation.protocol import PROTOCOL_SAMPLING


#: where `snakemake` prepares the default preset's evaluation data (workflow/rules/data.smk: one folder per preset)
DEFAULT_DATA = Path("resources/data/default/eval")


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``vppo eval`` and ``vppo check`` (which may evaluate a checkpoint first)."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"prepared evaluation data (vppo prepare-data eval ...; default {DEFAULT_DATA})")
    parser.add_argument("--benchmarks", default="paper", help="paper (default: the paper's Avg set), all (every supported benchmark of vppo.catalog) or comma-separated keys")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                        help="hf: transformers generate (CPU/one GPU); vllm: vLLM engine, one n=k request per question")
    parser.add_argument("--samples", type=int, default=PROTOCOL_SAMPLING.n,
                        help=f"k of avg@k: samples per question, all scored (default {PROTOCOL_SAMPLING.n})")
    parser.add_argument("--max-new-tokens", type=int, default=PROTOCOL_SAMPLING.max_new_tokens,
                        help=f"default {PROTOCOL_SAMPLING.max_new_tokens}")
    parser.add_argument("--limit", type=int, default=None, help="first N usable questions per benchmark (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-label", default=None, help="model name recorded in the results (default: dir name)")
    parser.add_argument("--method-label", default=None, help="method name recorded in the results")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="questions per generate call, each k times (default: hf 8, vllm 512)")
    parser.add_argument("--tensor-parallel-size", type=int, default=None, help="vllm: default from the model size")
    parser.add_argument("--tasks-dir", type=Path, default=None, help="lmms-eval task folder (default: benchmarks/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-evaluate even when matching results exist, and replace our results of another "
                             "--model-label/--method-label; files this command did not write are never replaced")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="HF checkpoint directory (Qwen2.5-VL or Qwen3-VL)")
    parser.add_argument("--out", type=Path, required=True, help="results directory: <benchmark>.json + .samples.jsonl")
    add_eval_options(parser)


def request_from_args(args: argparse.Namespace, checkpoint: Path, out: Path):
    from vppo.evaluation.runner import EvalRequest

    try:
        benchmarks = resolve_benchmarks(args.benchmarks)
    except ValueError as exc:
        raise InputError(f"--benchmarks: {exc}") from None
    return EvalRequest(checkpoint=checkpoint, data=args.data, benchmarks=benchmarks, out=out,
                       backend=args.backend, samples=args.samples, max_new_tokens=args.max_new_tokens,
                       limit=args.limit, seed=args.seed, model_label=args.model_label, method_label=args.method_label,
                       batch_size=args.batch_size, tensor_parallel_size=args.tensor_parallel_size,
                       tasks_dir=args.tasks_dir, overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    """Bad input (checkpoint, data, task folder, protocol) raises an :class:`vppo.errors.InputError`, reported by
    :func:`vppo.cli.main` (one line, exit 2)."""
    from vppo.evaluation.runner import run_eval

    started = time.perf_counter()
    results = run_eval(request_from_args(args, args.checkpoint, args.out))
    print(f"{'benchmark':<12} {'avg@k':>7} {'stderr':>7} {'n':>6} {'bad':>4}")
    for key, r in results.items():
        print(f"{key:<12} {r['accuracy']:7.2f} {r['stderr']:7.2f} {r['n_questions']:6d} {r['bad_rows']:4d}")
    print(f"results in {args.out} ({time.perf_counter() - started:.1f} s)")
    return 0
