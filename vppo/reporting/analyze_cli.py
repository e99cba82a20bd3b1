"""The ``vppo analyze`` command: one checkpoint's token vision dependency (:mod:`vppo.reporting.analysis`), or,
with ``--variants``, the same responses scored under several dependency passes (:mod:`vppo.reporting.variants`).

Kept apart from both so that each imports only downward: variants builds on analysis, this module on both.
"""

from __future__ import annotations

import argparse

from vppo.catalog import DEPENDENCY_ESTIMATOR_NAMES, MASKING_NAMES
from vppo.errors import InputError
from vppo.fileio import write_json_atomic
from vppo.reporting.analysis import analyze
from vppo.reporting.variants import analyze_variants


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="HF checkpoint directory")
    parser.add_argument("--data", required=True, help="evaluation data directory (VPPO-Eval layout)")
    parser.add_argument("--out", required=True, help="output JSON path")
    parser.add_argument("--n-prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benchmarks", default="paper", help="paper (default: the paper's Avg set), all (every supported benchmark) or keys")
    parser.add_argument("--model-label", default=None, help="default: the checkpoint's parent folder name")
    parser.add_argument("--method-label", default=None, help="default: the checkpoint folder name")
    parser.add_argument("--estimator", choices=DEPENDENCY_ESTIMATOR_NAMES, default=None,
                        help="k3 on the sampled token (the official code, default) or full-vocabulary KL (the paper)")
    parser.add_argument("--mask-strategy", default=None, choices=MASKING_NAMES, help="default: patch")
    parser.add_argument("--variants", default=None, metavar="MASKING:ESTIMATOR,...",
                        help="instead of one analysis, score the same responses under each dependency pass, e.g. "
                             "patch:k3,grey:k3,noise:k3,blur:k3,patch:kl, and compare each with patch:k3 "
                             "(vppo.reporting.variants; --estimator and --mask-strategy do not apply)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--bins", type=int, default=40)


def _analyze_and_write(analysis, args: argparse.Namespace) -> dict:
    """Run ``analysis(args)`` and write its JSON (bad input raises an InputError: vppo.cli reports it)."""
    result = analysis(args)
    write_json_atomic(args.out, result)
    return result


def run(args: argparse.Namespace) -> int:
    if args.n_prompts < 1 or args.samples < 1 or args.max_new_tokens < 1:
        raise InputError("--n-prompts, --samples and --max-new-tokens must be >= 1")
    if args.variants is not None:
        return run_variants(args)
    args.estimator, args.mask_strategy = args.estimator or "k3", args.mask_strategy or "patch"
    result = _analyze_and_write(analyze, args)
    td = result["token_dependency"]
    print(f"vppo analyze: {td['n_tokens']} tokens in {td['n_trajectories']} responses; median dependency "
          f"{td['quantiles']['0.5']}, top-40% share {td['mass_share_top']['0.4']}; wrote {args.out}")
    return 0


def run_variants(args: argparse.Namespace) -> int:
    if args.estimator is not None or args.mask_strategy is not None:
        raise InputError("--variants names each pass's masking and estimator; drop --estimator/--mask-strategy")
    result = _analyze_and_write(analyze_variants, args)
    shares = ", ".join(f"{name} {v['vs_reference']['kept_by_both_share']:.2f}" for name, v in result["variants"].items()
                       if v["vs_reference"]["kept_by_both_share"] is not None)
    print(f"vppo analyze: {len(result['trajectories'])} responses under {len(result['variants'])} dependency passes; "
          f"TGF tokens kept by both the pass and {result['reference']}: {shares or 'none'}; wrote {args.out}")
    return 0
