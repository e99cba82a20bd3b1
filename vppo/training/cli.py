"""``vppo train``: one method preset trained with one recipe (resumes from WORK_DIR, writes OUT_DIR last).

    vppo train --model MODEL_DIR --data TRAIN_DATA_DIR --recipe smoke|7b|32b|PATH.yaml --method NAME \\
               --work-dir WORK_DIR --out OUT_DIR [--seed 0] [--max-steps N] [--run-name NAME]
               [--set KEY=VALUE ...]

On several GPUs or nodes, run it through ``workflow/scripts/launch_train.sh`` (accelerate launch); alone it
trains in one process (the CPU smoke run, or one GPU).
"""

from __future__ import annotations

import argparse
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


def run(args: argparse.Namespace) -> int:
    """Bad input (recipe, method, data, checkpoint, work dir, resume; a rollout batch dynamic sampling cannot fill)
    raises an :class:`vppo.errors.InputError`, reported by :func:`vppo.cli.main` (one line, exit 2)."""
    from vppo.training.recipes import load_recipe, method_preset, parse_overrides

    # The recipe and method, read and resolved once, here: a bad key or name fails before the heavy imports.
    overrides = parse_overrides(args.overrides)
    recipe = load_recipe(args.recipe, overrides, args.max_steps)
    preset = method_preset(args.method, recipe)

    from vppo.training.runner import TrainRequest, run_training

    request = TrainRequest(model=args.model, data=args.data, recipe=args.recipe, method=args.method,
                           work_dir=args.work_dir, out=args.out, seed=args.seed, max_steps=args.max_steps,
                           overrides=overrides, run_name=args.run_name)
    out = run_training(request, recipe=recipe, preset=preset)
    print(f"vppo train: finished, results in {out}")
    return 0
