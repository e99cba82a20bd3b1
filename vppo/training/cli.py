"""``vppo train``: one method preset trained with one recipe (resumes from WORK_DIR, writes OUT_DIR last).

    vppo train --model MODEL_DIR --data TRAIN_DATA_DIR --recipe smoke|7b|32b|PATH.yaml --method NAME \\
               --work-dir WORK_DIR --out OUT_DIR [--seed 0] [--max-steps N] [--run-name NAME]
               [--set KEY=VALUE ...] [--save-margin SECONDS]

Exit status 0 (published), 2 (bad input, or the work folder is in use), 3 (out of memory), 75 (saved before the
Slurm time limit or on SIGUSR1: run again to resume); see vppo.training.exits. On several GPUs or nodes, run it through ``workflow/scripts/launch_train.sh`` (accelerate launch); alone it
trains in one process (the CPU smoke run, or one GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vppo.catalog import method_descriptions, method_grammar


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "methods (vppo.catalog):\n" + method_descriptions(trained_only=True)
    parser.add_argument("--model", type=Path, required=True, help="HF checkpoint directory of the initial policy")
    parser.add_argument("--data", type=Path, required=True, help="training data directory (vppo prepare-data train)")
    parser.add_argument("--recipe", required=True, help="smoke | 7b | 32b | path to a recipe YAML")
    parser.add_argument("--method", required=True, help=method_grammar(trained_only=True))
    parser.add_argument("--work-dir", type=Path, required=True, help="resumable trainer state (checkpoint-N folders)")
    parser.add_argument("--out", type=Path, required=True, help="finished run: final/, training_log.jsonl, summary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--run-name", default=None,
                        help="the run's name in TensorBoard, W&B or trackio "
                             "(default: <model folder>/<method>/seed<seed>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (YAML-typed), e.g. --set learning_rate=1e-5; "
                             "--set dependency_estimator=kl / --set masking=grey choose the dependency pass of a "
                             "method that leaves it at its default (k3, patch); vppo_exact_kl, vppo_grey, ... carry "
                             "their own, and a contradicting --set is an error")
    parser.add_argument("--save-margin", type=float, default=None, metavar="SECONDS",
                        help="inside a Slurm job: save and stop (exit 75, resumable) at the last rollout boundary "
                             "whose next rollout would leave less than SECONDS before the time limit (default: "
                             "run until killed). SIGUSR1 to any rank always saves and stops at the next boundary")


def run(args: argparse.Namespace) -> int:
    """Check the recipe and method, hold the work folder (unless the launcher does), refuse a repeated known
    failure, train; the exit status tells a retry whether it can help (vppo.training.exits). Bad input raises an
    :class:`vppo.errors.InputError`, reported by :func:`vppo.cli.main` (one line, exit 2): a bad recipe key or
    method before anything is written (a retry repeats a check of seconds), bad data, checkpoint, work dir or
    resume, or a rollout batch dynamic sampling cannot fill, recorded first, so that a retry with the same inputs
    stops before loading anything; the work folder held by another writer, never recorded."""
    from vppo.fileio import require_writable
    from vppo.training import exits, work_lock
    from vppo.training.recipes import load_recipe, method_preset, parse_overrides

    # The recipe and method, read and resolved once, here: a bad key or name fails before the heavy imports.
    overrides = parse_overrides(args.overrides)
    recipe = load_recipe(args.recipe, overrides, args.max_steps)
    preset = method_preset(args.method, recipe)
    require_writable(args.out, "--out")  # before the lock creates WORK_DIR: a place that cannot take it fails now
    require_writable(args.work_dir, "--work-dir")
    with work_lock.holding(args.work_dir) as token:
        fingerprint = exits.fingerprint(args)
        known = exits.refuse_known_failure(args, fingerprint, "vppo train")
        if known is not None:
            return known
        if token is not None:
            exits.clear(args.work_dir)
        return _train(args, fingerprint, overrides, recipe, preset)


def _failed(args, kind: str, message: str, fingerprint: str | None) -> int:
    from vppo.training import exits

    print(f"vppo train: {message}", file=sys.stderr)
    exits.record(args.work_dir, kind, message, fingerprint)
    return exits.OUTCOMES[kind][0]


def _train(args: argparse.Namespace, fingerprint: str, overrides: dict, recipe, preset) -> int:
    from vppo.errors import InputError
    from vppo.training import exits
    from vppo.training.exits import is_out_of_memory, out_of_memory_advice
    from vppo.training.runner import StoppedBeforeLimit, TrainRequest, run_training

    request = TrainRequest(model=args.model, data=args.data, recipe=args.recipe, method=args.method,
                           work_dir=args.work_dir, out=args.out, seed=args.seed, max_steps=args.max_steps,
                           overrides=overrides, run_name=args.run_name, save_margin_s=args.save_margin)
    try:
        out = run_training(request, recipe=recipe, preset=preset)
    except InputError as exc:  # a retry of the same inputs would fail the same way: recorded, then reported
        exits.record(args.work_dir, "bad_input", " ".join(str(exc).split()), fingerprint)
        raise
    except StoppedBeforeLimit as exc:  # its checkpoint is complete: the next attempt resumes from it
        return _failed(args, "saved_before_limit", str(exc), None)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _failed(args, "out_of_memory", f"out of memory ({first_line[:200]}): {out_of_memory_advice(recipe)}",
                       fingerprint)
    print(f"vppo train: finished, results in {out}")
    return 0
