"""``vppo train``: one method preset trained with one recipe (resumes from WORK_DIR, writes OUT_DIR last).

    vppo train --model MODEL_DIR --data TRAIN_DATA_DIR --recipe smoke|7b|32b|PATH.yaml --method NAME \\
               --work-dir WORK_DIR --out OUT_DIR [--seed 0] [--max-steps N] [--run-name NAME]
               [--set KEY=VALUE ...]

On several GPUs or nodes, run it through ``workflow/scripts/launch_train.sh`` (accelerate launch); alone it
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


def run(args: argparse.Namespace) -> int:
    from vppo.modeling import CheckpointError
    from vppo.training.recipes import RecipeError, load_recipe, method_preset, parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
        # Fail on a bad recipe key or method name before the heavy imports.
        method_preset(args.method, load_recipe(args.recipe, overrides, args.max_steps))
    except (RecipeError, ValueError) as exc:
        print(f"vppo train: {exc}", file=sys.stderr)
        return 2

    from vppo.data.train_data import TrainDataError
    from vppo.training.runner import TrainError, TrainRequest, run_training

    request = TrainRequest(model=args.model, data=args.data, recipe=args.recipe, method=args.method,
                           work_dir=args.work_dir, out=args.out, seed=args.seed, max_steps=args.max_steps,
                           overrides=overrides, run_name=args.run_name)
    from vppo.training.trainer import ResumeError, SamplingCapError

    try:
        out = run_training(request)
    except (TrainError, CheckpointError, TrainDataError, RecipeError, ResumeError) as exc:
        print(f"vppo train: {exc}", file=sys.stderr)
        return 2
    except SamplingCapError as exc:  # the run itself failed; its checkpoints stay in WORK_DIR
        print(f"vppo train: {exc}", file=sys.stderr)
        return 1
    print(f"vppo train: finished, results in {out}")
    return 0
