"""``vppo prune-work WORK_DIR``: after a training run is published, keep only its last complete checkpoint.

A ZeRO-3 checkpoint of the 7B policy with optimizer state is ~116 GB (``vppo plan``) and the paper preset saves
dozens per run; the published run (results/train/...) no longer needs them, and the last one is kept so that a forced retrain
can still resume. Only ``checkpoint-N`` folders (what the trainer wrote) are removed; nothing else in the work
folder is touched, and nothing is removed when no checkpoint there is complete.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from vppo.errors import InputError
from vppo.training.checkpoints import checkpoints, last_complete_checkpoint


def stale_checkpoints(work_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-N`` folder except the last complete one (empty when none is complete)."""
    keep = last_complete_checkpoint(work_dir)
    if keep is None:
        return []
    return [path for _, path in checkpoints(work_dir) if path != keep]


def prune_work(work_dir: str | Path) -> list[Path]:
    """Remove :func:`stale_checkpoints`; returns what was removed."""
    removed = stale_checkpoints(work_dir)
    for path in removed:
        shutil.rmtree(path)
    return removed


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("work_dir", type=Path, help="a training work folder (vppo train --work-dir)")


def run(args: argparse.Namespace) -> int:
    if not args.work_dir.is_dir():
        raise InputError(f"{args.work_dir}: no such folder")
    removed = prune_work(args.work_dir)
    kept = last_complete_checkpoint(args.work_dir)
    print(f"vppo prune-work: removed {len(removed)} checkpoint(s) from {args.work_dir}; kept {kept.name if kept else 'none'}")
    return 0
