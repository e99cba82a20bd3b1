"""``vppo`` command line: one subcommand per stage, each living next to the code it drives.

Subcommand modules are imported only when chosen, so ``vppo --help`` does not import torch. Each module
exposes ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vppo.errors import InputError, report_bad_input

#: name -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("vppo.doctor", "preflight of this machine: python, NVIDIA driver, torch + CUDA, vLLM, free disk"),
    "plan": ("vppo.reporting.plan", "disk and GPU-hours a workflow configuration needs; exits 2 when the disk is short"),
    "make-tiny-model": ("vppo.data.tiny_models", "write a tiny Qwen2.5-VL checkpoint offline (random-init, or warm-started on the answer format)"),
    "fetch-model": ("vppo.data.models", "put a base or released checkpoint (tiny, local dir, hub id) in place"),
    "prepare-data": ("vppo.data.cli", "build or fetch training and evaluation data into the local layout"),
    "tasks": ("vppo.evaluation.taskfiles", "write the lmms-eval task folders benchmarks/<key>/ from the registry"),
    "train": ("vppo.training.cli", "train a policy with a method preset (grpo, dapo, vppo, ablations)"),
    "prune-work": ("vppo.training.prune", "keep only the last complete checkpoint of a published training run"),
    "convert": ("vppo.training.convert", "turn a trainer checkpoint into a standalone HF checkpoint with a model card"),
    "eval": ("vppo.evaluation.cli", "avg@k evaluation of a checkpoint on the registry's benchmarks via lmms-eval"),
    "card": ("vppo.reporting.card", "add the avg@k table of a converted checkpoint's evaluations to its model card"),
    "check": ("vppo.evaluation.check", "regression-check a checkpoint's results against a reference"),
    "compare": ("vppo.evaluation.compare", "paired per-question differences of two checkpoints or result folders"),
    "analyze": ("vppo.reporting.analyze_cli", "token vision-dependency statistics of a checkpoint (paper figs 1-2)"),
    "gradient-variance": ("vppo.training.gradient_variance",
                          "measured gradient variance of VPPO's weightings against GRPO's on a checkpoint's rollouts"),
    "tables": ("vppo.reporting.tables", "build one of the registry's tables (vppo.catalog.TABLES) next to the paper's numbers"),
    "study": ("vppo.reporting.study", "seed study table: mean over seeds, paired differences with 95% intervals"),
    "sensitivity": ("vppo.reporting.sensitivity",
                    "protocol sensitivity: how much each evaluation or training choice moves avg@k, with intervals"),
    "figures": ("vppo.reporting.figures", "training curves, token-dependency and per-benchmark figures (PNG)"),
    "report": ("vppo.reporting.report", "one self-contained HTML page: tables, figures, provenance, cost"),
    "status": ("vppo.reporting.status", "where a reproduction stands: each cell done, running, failed or waiting"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="vppo", description=__doc__.splitlines()[0], epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_level_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"vppo {name}", description=help_)
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except InputError as exc:  # expected bad input: one line, exit 2; anything else is a bug (traceback)
        return report_bad_input(name, exc)
