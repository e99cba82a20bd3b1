"""How a training attempt ended, and whether trying it again can help.

Snakemake's ``retries:`` reruns any failed job. A failure that the same inputs repeat (bad input or config, out of
memory) must not be paid for again on 8 or 32 GPUs, so the attempt that meets one records it in
``WORK_DIR/vppo_exit.json`` with a fingerprint of its inputs (the ``vppo train`` arguments, the recipe file, the
model and data folders' file listing, the code's commit and the Slurm allocation's partition, memory and GPUs).
The next attempt with the same fingerprint exits at once with the recorded line (:func:`refuse_known_failure`): a
retry costs its queue wait and seconds, not another model load. Changing any of those inputs, or deleting the
file, lets the next attempt run.

Exit statuses of ``vppo train`` and of the launcher:

- 0: finished and published;
- 2 (:data:`vppo.errors.EXIT_BAD_INPUT`): bad input or config, or the work folder is in use (never recorded: the
  other writer's run is not this attempt's failure), or a known failure refused;
- 3 (:data:`EXIT_OUT_OF_MEMORY`): out of memory (GPU or host, as torch reports it);
- 75 (:data:`EXIT_RESUMABLE`, sysexits' EX_TEMPFAIL): saved a checkpoint before the Slurm time limit or on
  SIGUSR1 (:mod:`vppo.training.time_limit`); the next attempt resumes from it;
- anything else (a crash, a signal from a preemption, a node failure or the time limit): retried.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from vppo.errors import EXIT_BAD_INPUT
from vppo.fileio import write_json_atomic

EXIT_OUT_OF_MEMORY = 3
EXIT_RESUMABLE = 75
EXIT_FILE = "vppo_exit.json"
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")
#: kind -> (exit status, whether another attempt with the same inputs can succeed)
OUTCOMES = {"bad_input": (EXIT_BAD_INPUT, False), "out_of_memory": (EXIT_OUT_OF_MEMORY, False),
            "saved_before_limit": (EXIT_RESUMABLE, True)}


def _listing(folder: Path) -> list:
    """(name, size, mtime) of a folder's top-level files: a replaced checkpoint or re-prepared data changes it."""
    if not folder.is_dir():
        return ["missing"]
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())


def _recipe_bytes(recipe: str) -> str:
    from vppo.training.recipes import RECIPE_DIR

    path = Path(recipe) if Path(recipe).suffix else RECIPE_DIR / f"{recipe}.yaml"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


#: The Slurm allocation's shape as its jobs see it: a partition with larger GPUs or more memory per node is a new
#: attempt for an out-of-memory failure (node names and GPU ids, which change with every allocation, are not in it).
ALLOCATION_ENV = ("SLURM_JOB_PARTITION", "SLURM_JOB_QOS", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU",
                  "SLURM_MEM_PER_GPU", "SLURM_GPUS_ON_NODE", "SLURM_JOB_NUM_NODES")


def fingerprint(args, environ: dict | None = None) -> str:
    """What decides whether an attempt fails again: its ``vppo train`` arguments (argparse namespace) and what they
    name, read without loading anything (a recipe that does not load has a fingerprint too), and the Slurm
    allocation it runs in (:data:`ALLOCATION_ENV`)."""
    import os

    from vppo import harness_commit

    environ = os.environ if environ is None else environ
    arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
                 if k in ("model", "data", "recipe", "method", "work_dir", "out", "seed", "max_steps", "overrides")}
    identity = {"arguments": arguments, "recipe_file": _recipe_bytes(str(args.recipe)),
                "model_files": _listing(Path(args.model)), "data_files": _listing(Path(args.data)),
                "code": harness_commit(), "allocation": {k: environ.get(k) for k in ALLOCATION_ENV}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def record(work_dir: str | Path, kind: str, message: str, print_key: str | None) -> None:
    """Write how this attempt ended; ``print_key`` is the inputs' fingerprint (None for a retryable end)."""
    code, retry = OUTCOMES[kind]
    try:
        write_json_atomic(Path(work_dir) / EXIT_FILE, {
            "kind": kind, "exit_status": code, "retry": retry, "message": message, "fingerprint": print_key,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except OSError:
        pass  # a read-only or full work folder: the failure was reported; its retry will meet it again


def read(work_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(work_dir) / EXIT_FILE).read_text())
    except (OSError, ValueError):
        return None


def refuse_known_failure(args, print_key: str, command: str) -> int | None:
    """The exit status to end with at once when inputs of fingerprint ``print_key`` already failed
    deterministically in ``args.work_dir`` (printing the recorded line), else None."""
    recorded = read(args.work_dir)
    if not recorded or recorded.get("retry") or recorded.get("fingerprint") != print_key:
        return None
    path = Path(args.work_dir) / EXIT_FILE
    print(f"{command}: not retried: {recorded['message']} (an attempt with the same arguments, recipe, model, data, "
          f"code and allocation failed so at {recorded['time']}; change what it says, or delete {path} to try "
          "unchanged)",
          file=sys.stderr)
    return int(recorded["exit_status"])


def clear(work_dir: str | Path) -> None:
    """A new attempt starts: forget how the last one ended (called by the work folder's lock holder)."""
    (Path(work_dir) / EXIT_FILE).unlink(missing_ok=True)


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc).lower()  # CUDA errors raised as RuntimeError, the CPU allocator's own
    return isinstance(exc, MemoryError) or any(words in text for words in _OUT_OF_MEMORY_WORDS)


def out_of_memory_advice(recipe) -> str:
    return (f"lower micro_batch_responses (now {recipe.micro_batch_responses}; it must divide each rank's update "
            f"responses) or, with vLLM colocated, vllm_gpu_memory_utilization (now "
            f"{recipe.vllm_gpu_memory_utilization}) through train.set or --set KEY=VALUE (docs/cluster.md, "
            f"'GPU memory budget')")
