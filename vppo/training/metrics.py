"""Per-step training metrics: phase timers, the contract keys of ``training_log.jsonl`` and its writer, and the
progress file of a running job.

Every logged step becomes one JSON line with at least :data:`LOG_KEYS` (null where a key does not apply to
the method, e.g. alpha for dapo) plus whatever TRL logged (prefixed keys such as ``completions/mean_length``
are kept as they are). On resume the log is cut back to the resumed step, so a killed-and-resumed run
writes the same lines as an uninterrupted one (timings aside).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from vppo.fileio import write_json_atomic, write_jsonl_atomic

#: Keys every line of training_log.jsonl carries (contract with the reporting stage).
LOG_KEYS = (
    "step", "reward", "accuracy", "format", "kept_token_fraction", "dependency_kept_mean",
    "dependency_dropped_mean", "alpha_mean", "alpha_min", "alpha_max", "filtered_groups",
    "time_generation_s", "time_old_logp_s", "time_masked_pass_s", "time_update_s", "tokens_per_s", "loss",
    "dependency_estimator", "masking",  # names, for methods with the masked-image pass: how dependency was measured
)
PHASES = ("generation", "old_logp", "masked_pass", "update")
#: how a metric list collected between two logs is reduced (default: mean)
REDUCERS = {
    "alpha_min": min, "alpha_max": max, "filtered_groups": sum, "sampling_rounds": sum, "skipped_updates": sum,
    "weight_sync_max_diff": max, "weight_sync_checks": sum,
    **{f"time_{phase}_s": sum for phase in PHASES},
}


def sync_cuda() -> None:
    """Wait for queued GPU work, so wall time is attributed to the phase that launched it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PhaseTimer:
    """Wall time per phase, accumulated until :meth:`take`; synchronises CUDA so GPU work is attributed."""

    def __init__(self):
        self.totals = {phase: 0.0 for phase in PHASES}

    @contextmanager
    def phase(self, name: str):
        sync_cuda()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync_cuda()
            self.totals[name] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, {phase: 0.0 for phase in PHASES}
        return out


def reduce_metric(key: str, values: list[float]) -> float | None:
    """Reduce the values a metric collected between two logs (NaN and None ignored; None if nothing left)."""
    valid = [v for v in values if v is not None and not math.isnan(v)]
    if not valid:
        return None
    return float(REDUCERS.get(key, lambda xs: sum(xs) / len(xs))(valid))


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


class JsonlLogCallback(TrainerCallback):
    """Append one JSON object per training log to ``path`` (main process only)."""

    def __init__(self, path: str | Path, resumed_step: int = 0):
        self.path = Path(path)
        self.resumed_step = resumed_step

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        kept = [line for line in read_log(self.path) if line["step"] <= self.resumed_step] if self.path.exists() else []
        write_jsonl_atomic(self.path, kept)  # a kill here must not lose the log of the steps before the resume

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return  # the end-of-training summary goes to train_summary.json instead
        line = {key: None for key in LOG_KEYS}
        line.update({key: _jsonable(value) for key, value in logs.items()})
        line["step"] = state.global_step
        with self.path.open("a") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")


def read_log(path: str | Path) -> list[dict]:
    """The lines of a training_log.jsonl (an unterminated last line, from a kill mid-write, is dropped)."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return lines


#: what the progress bar shows after each step (the full record goes to training_log.jsonl)
PROGRESS_KEYS = {"loss": "loss", "reward": "reward", "kept_token_fraction": "kept", "alpha_mean": "alpha",
                 "filtered_groups": "filtered", "tokens_per_s": "tok/s"}


class CompactProgressCallback(ProgressCallback):
    """The Trainer's progress bar, with a few key figures as its postfix instead of a printed dict per step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs or "train_runtime" in logs:
            return
        shown = {label: logs[key] for key, label in PROGRESS_KEYS.items() if isinstance(logs.get(key), (int, float))}
        self.training_bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)


class ProgressFileCallback(TrainerCallback):
    """Rewrites ``WORK_DIR/vppo_progress.json`` (:data:`vppo.training.tracking.PROGRESS_FILE`) at each optimizer
    step, on the main process: what ``vppo status`` reads of a running job (times are epoch seconds)."""

    def __init__(self, path: Path, run_name: str, start_step: int):
        self.path, self.run_name = Path(path), run_name
        self.record = {"run_name": run_name, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time(), "start_step": start_step, "step": start_step, "max_steps": None,
                       "reward": None, "phase": "starting", "training_since": None}

    def write(self, **changes) -> None:
        self.record.update(changes, updated=time.time())
        write_json_atomic(self.path, self.record)

    def on_train_begin(self, args, state, control, **kwargs):
        # step times are measured from here: loading the model and data is not a training step
        self.write(phase="training", step=state.global_step, max_steps=state.max_steps, training_since=time.time(),
                   start_step=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.write(step=state.global_step, max_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("reward"), (int, float)):
            self.write(reward=float(logs["reward"]))

    def on_train_end(self, args, state, control, **kwargs):
        self.write(phase="finished", step=state.global_step)
