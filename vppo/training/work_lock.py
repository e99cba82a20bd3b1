"""One writer per training work folder: ``WORK_DIR/vppo_train.lock`` names the process that trains there.

A head Snakemake restarted while a training job runs resubmits the same cell into the same folder; two writers
would interleave checkpoints and one would delete the other's staging folder. The lock (a JSON file created with
O_EXCL: host, pid, the process's start time, the Slurm job id when there is one) is held for the whole run by one
process: the launcher (``workflow/scripts/launch_train.sh``), which passes its token to every rank through
``VPPO_WORK_LOCK_TOKEN``, or ``vppo train`` itself when it runs without the launcher (rank 0 only, when started
by hand under ``accelerate launch``).

A second writer is refused with one line naming the holder. A lock is stale, and taken over, when its holder
is gone: its Slurm job is no longer running (``squeue``), is this very job (Slurm requeued it), or, without a
job id, its pid no longer runs on this host. A holder on another host without a job id, or a job whose state
``squeue`` cannot tell, is treated as alive: the message says which file to delete if it is not.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from vppo.errors import InputError

LOCK_FILE = "vppo_train.lock"
TOKEN_ENV = "VPPO_WORK_LOCK_TOKEN"
#: Slurm job states in which the job's processes may still run (anything else: they are gone, or never started).
LIVE_JOB_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                   "RESIZING"}


class WorkDirBusy(InputError):
    """Another process trains in this work folder (not a failure of this run's inputs: never recorded as one)."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), so a reused pid is not taken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_running(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = process_start_time(pid)
    return started is None or now is None or now == started


def slurm_job_state(job_id: str) -> str | None:
    """The job's state as ``squeue`` tells it, ``""`` when Slurm no longer knows the job, None when it cannot say."""
    if not shutil.which("squeue"):
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return "" if "invalid job id" in done.stderr.lower() else None
    return done.stdout.strip().split("\n")[0].strip()


def holder_alive(holder: dict, host: str, own_job: str | None) -> bool | None:
    """True/False when the holder is known to run / be gone; None when this host cannot tell."""
    job = holder.get("slurm_job_id")
    if job:
        if job == own_job:
            return False  # this job, requeued by Slurm: its earlier run is gone
        state = slurm_job_state(job)
        if state is None:
            return None
        if state not in LIVE_JOB_STATES:
            return False
    if holder.get("host") == host:
        return pid_running(int(holder["pid"]), holder.get("pid_started"))
    return True if job else None


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('since')}"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a holder killed while creating it: a holder that never started


def holder_of(work_dir: str | Path) -> dict | None:
    """The lock's holder record of ``work_dir``, or None when nobody holds it (or a starter died writing it)."""
    return _read(Path(work_dir) / LOCK_FILE) or None


def acquire(work_dir: str | Path, environ: dict | None = None) -> str:
    """Take the lock of ``work_dir`` (taking over a stale one); returns its token. :class:`WorkDirBusy` if held."""
    environ = os.environ if environ is None else environ
    work_dir = Path(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--work-dir {work_dir}: cannot create it ({exc.strerror})") from None
    path, host, own_job = work_dir / LOCK_FILE, socket.gethostname(), environ.get("SLURM_JOB_ID") or None
    token = uuid.uuid4().hex
    mine = {"token": token, "host": host, "pid": os.getpid(), "pid_started": process_start_time(os.getpid()),
            "slurm_job_id": own_job, "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile
            alive = holder_alive(holder, host, own_job) if holder else False
            if alive is not False:
                doubt = "" if alive else " (cannot tell whether it still runs)"
                raise WorkDirBusy(f"{work_dir}: another training run writes here: {describe(holder)}{doubt}; "
                                  f"not starting a second one. If it is gone, delete {path}")
            if _read(path) == holder:  # still the stale one we judged (another taker may have been faster)
                path.unlink(missing_ok=True)
            time.sleep(0.1)
            continue
        except OSError as exc:
            raise InputError(f"--work-dir {work_dir}: cannot write its lock {path} ({exc.strerror})") from None
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(mine, handle, sort_keys=True)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise InputError(f"--work-dir {work_dir}: cannot write its lock {path} ({exc.strerror})") from None
        return token
    raise WorkDirBusy(f"{work_dir}: could not take {path} (another process keeps taking it)")


def release(work_dir: str | Path, token: str) -> None:
    """Remove the lock if it is still ``token``'s."""
    path = Path(work_dir) / LOCK_FILE
    holder = _read(path)
    if holder and holder.get("token") == token:
        path.unlink(missing_ok=True)


def held_for_us(work_dir: str | Path, environ: dict) -> bool:
    """Whether the launcher that started this process holds the lock (its token is in our environment)."""
    holder = _read(Path(work_dir) / LOCK_FILE)
    return bool(holder and environ.get(TOKEN_ENV) and holder.get("token") == environ[TOKEN_ENV])


@contextmanager
def holding(work_dir: str | Path, environ: dict | None = None):
    """Hold the lock for the block, unless the launcher holds it for us or this is not rank 0."""
    environ = dict(os.environ if environ is None else environ)
    if held_for_us(work_dir, environ) or int(environ.get("RANK", "0") or 0) != 0:
        yield None
        return
    token = acquire(work_dir, environ)
    try:
        yield token
    finally:
        release(work_dir, token)
