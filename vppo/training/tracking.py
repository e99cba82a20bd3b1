"""Experiment tracking of a training run: TRL's own ``report_to`` integrations, and a progress file.

Imports nothing heavy at module level: the recipe check and ``vppo status`` read it.

``report_to`` (a recipe key: ``--set report_to=wandb``, the workflow's ``train.report_to``) names one or more of
:data:`TRACKERS`, comma-separated; ``none`` turns tracking off. The default, ``tensorboard``, writes event files
offline under ``WORK_DIR/tensorboard/<run name>`` (``tensorboard --logdir WORK_DIR/tensorboard``). Every
metric the trainer logs reaches the tracker with its step, through the Trainer's own callback: TRL's
``report_to`` is the only path. Two things are ours: where TensorBoard writes (one folder per run, not one
per process start) and, on resume, the purge of the steps a killed run had logged after its last checkpoint
(``purge_step``), so the curves hold each step once, as ``training_log.jsonl`` does.

The run's name says model, method and seed (``<model>/<method>/seed<seed>``: ``vppo train --run-name``, which
the workflow sets from its cell); W&B and trackio show it as the run name.

``WORK_DIR/vppo_progress.json`` (:class:`vppo.training.metrics.ProgressFileCallback`) is what ``vppo status``
reads of a running job: host and process id, the step and the total, the last reward, when this process started
and when the file was last written. It is first written before the model loads, then at every optimizer step.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from vppo.errors import InputError

PROGRESS_FILE = "vppo_progress.json"
TENSORBOARD_DIR = "tensorboard"
DEFAULT_REPORT_TO = "tensorboard"
NO_TRACKING = "none"


@dataclass(frozen=True)
class Tracker:
    """One ``report_to`` integration of transformers: the package it needs and where its local files go."""

    package: str
    #: environment variables set to a folder of WORK_DIR unless the user set them (the tracker's local files)
    local_dirs: dict[str, str] = field(default_factory=dict)


#: report_to name -> tracker (docs/tracking.md: what each writes, and when it goes online)
TRACKERS = {
    "tensorboard": Tracker("tensorboard"),  # event files under WORK_DIR/tensorboard/<run name>: never online
    "wandb": Tracker("wandb", {"WANDB_DIR": "."}),  # WORK_DIR/wandb; online unless WANDB_MODE=offline
    "trackio": Tracker("trackio"),  # trackio's local database unless TRACKIO_SPACE_ID names a Space
}

#: the trackers' folder variables the user set before this process started: those stay as they are
USER_SET_DIRS = {variable for tracker in TRACKERS.values() for variable in tracker.local_dirs
                 if variable in os.environ}


def report_targets(value: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> ``["tensorboard", "wandb"]``; ``none`` -> []; unknown names raise ValueError."""
    names = [name.strip() for name in (value or DEFAULT_REPORT_TO).split(",") if name.strip()]
    if names == [NO_TRACKING]:
        return []
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown or not names:
        raise ValueError(f"{value!r}: report_to takes {NO_TRACKING!r} or a comma-separated list of "
                         f"{', '.join(TRACKERS)} (unknown: {', '.join(unknown) or 'empty'})")
    return names


def default_run_name(model: Path, method: str, seed: int) -> str:
    return f"{Path(model).name}/{method}/seed{seed}"


def tensorboard_dir(work_dir: Path, run_name: str) -> Path:
    return Path(work_dir) / TENSORBOARD_DIR / run_name


def tracking_kwargs(report_to: str | None, run_name: str, work_dir: Path) -> dict:
    """GRPOConfig's ``run_name`` (its ``report_to`` is the recipe's:
    :func:`vppo.training.trl_config.grpo_config_kwargs`);
    checks that each chosen tracker is installed and points its local files into WORK_DIR.

    Raises :class:`InputError` when a chosen tracker's package is not installed (the Trainer would fail later
    with a traceback)."""
    targets = report_targets(report_to)
    for name in targets:
        tracker = TRACKERS[name]
        if importlib.util.find_spec(tracker.package) is None:
            raise InputError(f"report_to={name}: the {tracker.package} package is not installed (pip install "
                             f"{tracker.package}), or choose another tracker (--set report_to=none turns tracking off)")
        for variable, folder in tracker.local_dirs.items():
            if variable not in USER_SET_DIRS:
                os.environ[variable] = str(Path(work_dir) / folder)
    return {"run_name": run_name}


def progress_callbacks(work_dir: Path, run_name: str, resumed_step: int, args) -> list:
    """The progress file's callback on the main process (none elsewhere), its first version written now: from
    here on, while the model loads, ``vppo status`` sees this job rather than a previous one's file."""
    from vppo.training.metrics import ProgressFileCallback

    if args.process_index != 0:
        return []
    progress = ProgressFileCallback(Path(work_dir) / PROGRESS_FILE, run_name, resumed_step)
    progress.write(phase="starting", step=resumed_step, max_steps=args.max_steps if args.max_steps > 0 else None)
    return [progress]


def attach_trackers(trainer, work_dir: Path, run_name: str, resumed_step: int) -> dict:
    """Point TRL's TensorBoard callback at ``WORK_DIR/tensorboard/<run name>`` (purging steps after a resume);
    returns what the run's summary records of its tracking."""
    from transformers.integrations import TensorBoardCallback

    targets = list(trainer.args.report_to or [])
    record = {"report_to": targets, "run_name": run_name, "tensorboard_dir": None}
    if "tensorboard" in targets:
        folder = tensorboard_dir(work_dir, run_name)
        record["tensorboard_dir"] = str(folder)
        if trainer.accelerator.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of steps after the resumed checkpoint (logged by the killed run) are dropped
            writer = SummaryWriter(log_dir=str(folder), purge_step=resumed_step + 1 if resumed_step else None)
            trainer.remove_callback(TensorBoardCallback)
            trainer.add_callback(TensorBoardCallback(tb_writer=writer))
    return record
