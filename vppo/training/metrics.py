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


#: :func:`vppo.algorithm.policy_loss`'s statistics -> the logged key; each rank's value is averaged over ranks
LOSS_STATS = {"pg_loss": "pg_loss", "entropy_loss": "entropy_penalty", "clipfrac_low": "clipfrac_low",
              "clipfrac_high": "clipfrac_high", "clipfrac_dual": "clipfrac_dual", "ppo_kl": "ppo_kl"}
#: logged keys that are a micro-batch's share of its update's token-mean: x gradient accumulation, so that their
#: mean over the update's micro-batches is the update's value whatever the chunk size
UPDATE_SHARES = ("pg_loss", "entropy_penalty")
#: the columns of one rank's loss statistics of a micro-batch (:func:`loss_columns`), gathered from every rank:
#: counts and sums add over ranks, the alpha extremes take the min / max over ranks
LOSS_SUMS = ("valid_tokens", "kept_tokens", "dropped_tokens", "dependency_kept", "dependency_dropped", "alpha_sum",
             "alpha_rows", "entropy")
LOSS_COLUMNS = (*LOSS_SUMS, "alpha_min", "alpha_max", *LOSS_STATS.values())


def loss_columns(stats: dict, mask: torch.Tensor, dependency: torch.Tensor | None, token_mask: torch.Tensor | None,
                 alpha: torch.Tensor | None, entropies: torch.Tensor) -> torch.Tensor:
    """This rank's row [len(LOSS_COLUMNS)] of one micro-batch's loss statistics, in :data:`LOSS_COLUMNS` order.

    stats: :func:`vppo.algorithm.policy_loss`'s statistics; mask, dependency, token_mask (TGF), entropies [B, T];
    alpha (TAS) [B]. Rows without a valid token carry no alpha; alpha_min / alpha_max are +inf / -inf without rows.
    """
    valid = mask.bool()
    kept = valid if token_mask is None else valid & token_mask.bool()
    dropped = valid & ~kept
    dep = torch.zeros_like(mask, dtype=torch.float32) if dependency is None else dependency.float()
    alpha_rows = alpha[valid.any(1)] if alpha is not None else torch.ones(0, device=mask.device)
    inf = torch.tensor(float("inf"), device=mask.device)
    some_alpha = alpha_rows.numel() > 0
    column = {
        "valid_tokens": valid.sum().float(), "kept_tokens": kept.sum().float(), "dropped_tokens": dropped.sum().float(),
        "dependency_kept": dep[kept].sum(), "dependency_dropped": dep[dropped].sum(),
        "alpha_sum": alpha_rows.sum(), "alpha_rows": torch.tensor(float(alpha_rows.numel()), device=mask.device),
        "alpha_min": alpha_rows.min() if some_alpha else inf, "alpha_max": alpha_rows.max() if some_alpha else -inf,
        "entropy": (entropies.detach().float() * mask).sum(),
        **{key: torch.tensor(float(stats[name]), device=mask.device) for name, key in LOSS_STATS.items()},
    }
    return torch.stack([column[name] for name in LOSS_COLUMNS]).float()


def loss_metrics(rows: torch.Tensor, accumulation: int, dependency: bool, alpha: bool) -> dict[str, float]:
    """The logged metrics of one micro-batch from every rank's :func:`loss_columns` ``rows`` [ranks, columns].

    accumulation: the gradient accumulation steps (see :data:`UPDATE_SHARES`); dependency / alpha: whether the
    method has them (their keys are left out otherwise). ``valid_tokens`` is the token count of all ranks.
    """
    column = {name: rows[:, i] for i, name in enumerate(LOSS_COLUMNS)}
    total = {name: column[name].sum().item() for name in LOSS_SUMS}
    n_valid, n_kept, n_dropped = total["valid_tokens"], total["kept_tokens"], total["dropped_tokens"]
    metrics = {"valid_tokens": n_valid, "kept_token_fraction": n_kept / max(n_valid, 1.0),
               "entropy": total["entropy"] / max(n_valid, 1.0)}
    for key in LOSS_STATS.values():
        metrics[key] = column[key].mean().item() * (accumulation if key in UPDATE_SHARES else 1)
    if dependency:
        metrics["dependency_kept_mean"] = total["dependency_kept"] / n_kept if n_kept else float("nan")
        metrics["dependency_dropped_mean"] = total["dependency_dropped"] / n_dropped if n_dropped else float("nan")
    if alpha and total["alpha_rows"] > 0:
        metrics.update(alpha_mean=total["alpha_sum"] / total["alpha_rows"], alpha_min=column["alpha_min"].min().item(),
                       alpha_max=column["alpha_max"].max().item())
    return metrics


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
