"""Save and stop before the Slurm time limit (or on SIGUSR1), at a rollout boundary, so the next attempt resumes.

Slurm's own warning signal (``sbatch --signal``) cannot be used under Snakemake's SLURM executor: ``B:`` signals
only the batch shell (``/bin/sh`` running Snakemake, which dies of SIGUSR1 and ends the job), and without ``B:``
every process of every step gets it, Snakemake's job-step process and the rule's shell included, which die of it
too. So the trainer asks Slurm for the job's time left instead (``squeue -o %L``, once at the start and again
before stopping, so an extended limit is honoured) and stops by itself. SIGUSR1 sent to any rank (``kill -USR1``)
asks for the same stop.

The stop happens only where a checkpoint resumes exactly: at the end of a rollout's last update (a save inside a
rollout could not resume exactly, vppo.training.recipes). At each such boundary rank 0 stops when the time left
would not cover another rollout (the longest one seen in this attempt) plus ``margin_s`` for the save itself (a margin
as long as the job's whole time limit is cut to half of it: a short job still trains); all ranks agree through one all-reduce (a DeepSpeed save is collective). The trainer then saves ``checkpoint-N``,
``vppo train`` exits with :data:`vppo.training.exits.EXIT_RESUMABLE` and the retry resumes from it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager

from transformers import TrainerCallback

logger = logging.getLogger(__name__)
_TIME_LEFT = re.compile(r"^(?:(?P<days>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)$")
_requested = {"signal": False}


def parse_time_left(text: str) -> float | None:
    """Seconds in squeue's ``%L`` (``[days-][hours:]minutes:seconds``); None for UNLIMITED, NOT_SET, INVALID."""
    match = _TIME_LEFT.match(text.strip())
    if not match:
        return None
    days, hours = int(match["days"] or 0), int(match["h"] or 0)
    return float(((days * 24 + hours) * 60 + int(match["m"])) * 60 + int(match["s"]))


def slurm_time_left(environ: dict | None = None) -> tuple[float | None, float | None]:
    """(seconds until this Slurm job's time limit, the whole limit in seconds); Nones outside a job or where
    squeue does not say."""
    job = (os.environ if environ is None else environ).get("SLURM_JOB_ID")
    if not job or not shutil.which("squeue"):
        return None, None
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L|%l"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    left, _, limit = done.stdout.strip().partition("|") if done.returncode == 0 else ("", "", "")
    return parse_time_left(left), parse_time_left(limit)


@contextmanager
def stop_on_sigusr1():
    """While training, SIGUSR1 asks for a save and stop at the next rollout boundary (instead of killing)."""
    _requested["signal"] = False

    def request(signum, frame):
        _requested["signal"] = True
        logger.warning("SIGUSR1: saving a checkpoint and stopping at the next rollout boundary")

    try:
        previous = signal.signal(signal.SIGUSR1, request)
    except ValueError:  # not the main thread: no handler (the time limit still works)
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)


class SaveBeforeTimeLimit(TrainerCallback):
    """Saves and stops training at the last rollout boundary the time limit allows (see the module doc).

    ``any_process(flag) -> bool`` is the trainer's all-reduce; ``time_left() -> (seconds left, limit)`` asks Slurm.
    """

    def __init__(self, any_process, is_main: bool, updates_per_rollout: int, margin_s: float | None,
                 time_left=slurm_time_left, clock=time.monotonic):
        self.any_process, self.is_main, self.updates = any_process, is_main, updates_per_rollout
        self.margin_s, self.time_left, self.clock = margin_s, time_left, clock
        self.limit = None
        self.deadline = self.last_boundary = None
        self.longest_rollout = 0.0
        self.stopped_at: int | None = None
        self.reason = ""

    def _refresh_deadline(self) -> None:
        left, self.limit = self.time_left() if self.margin_s is not None else (None, None)
        self.deadline = None if left is None else self.clock() + left

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_boundary = self.clock()
        if self.is_main:
            self._refresh_deadline()
            if self.deadline is not None:
                if self.limit and self.margin_s >= self.limit:
                    logger.warning("the save margin (%.0f s) is not shorter than the job's time limit (%.0f s): using "
                                   "%.0f s", self.margin_s, self.limit, self.limit / 2)
                    self.margin_s = self.limit / 2
                logger.warning("Slurm time limit in %.0f s: saving and stopping at the last rollout boundary that "
                               "leaves %.0f s for the save", self.deadline - self.last_boundary, self.margin_s)

    def _out_of_time(self, now: float) -> bool:
        if not self.is_main or self.deadline is None or self.deadline - now >= self.margin_s + self.longest_rollout:
            return False
        self._refresh_deadline()  # the limit may have been extended (scontrol update)
        return self.deadline is not None and self.deadline - now < self.margin_s + self.longest_rollout

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.updates or state.global_step >= state.max_steps:
            return control  # inside a rollout (no exact resume from there), or finishing anyway
        now = self.clock()
        self.longest_rollout = max(self.longest_rollout, now - self.last_boundary)
        self.last_boundary = now
        by_signal, by_time = _requested["signal"], self._out_of_time(now)
        if self.any_process(by_signal or by_time):  # collective: every rank reaches every boundary
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step
            self.reason = ("the Slurm time limit is near" if by_time else "SIGUSR1" if by_signal
                           else "another rank asked")
            logger.warning("stopping at step %d (%s): saving checkpoint-%d", state.global_step, self.reason,
                           state.global_step)
        return control
