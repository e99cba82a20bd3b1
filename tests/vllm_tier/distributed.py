"""Helpers of the distributed tests: launch ``vppo train`` through the project's launcher on 2 CPU processes.

The launcher (``vppo.training.launch.plan_launch``, what ``workflow/scripts/launch_train.sh`` runs) plans the
``accelerate launch`` command from the recipe; these helpers run that very command, optionally with the training
entry point swapped for ``tests/doubles/train_with_faults.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "doubles" / "train_with_faults.py"


def launch_command(train_args: list[str], faults: list[str] | None = None, port: int = 29500) -> list[str]:
    from vppo.training.launch import plan_launch

    (command,) = plan_launch(train_args, environ={}, port=port).commands
    if faults is not None:
        at = next(i for i in range(len(command)) if command[i:i + 3] == ["-m", "vppo", "train"])
        command = [*command[:at], str(FAULTS), *faults, "--", *command[at + 3:]]
    return command


def run_launch(train_args: list[str], log: Path, faults: list[str] | None = None, env: dict | None = None,
               timeout: int = 600, expect: int = 0) -> subprocess.CompletedProcess:
    """Run the planned launch; the log of both ranks goes to ``log`` and into the assertion message."""
    port = 20000 + os.getpid() % 20000  # tests running side by side must not share a rendezvous port
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with open(log, "w") as handle:
        done = subprocess.run(launch_command(train_args, faults, port), env=environ, stdout=handle,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != expect:
        raise AssertionError(f"launch exited {done.returncode} (expected {expect}); log {log}:\n"
                             f"{log.read_text(errors='replace')[-6000:]}")
    return done


def train_args(model: Path, data: Path, root: Path, recipe: str = "cpu_zero3", method: str = "vppo",
               extra: list[str] | None = None) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--recipe", recipe, "--method", method,
            "--work-dir", str(root / "work"), "--out", str(root / "out"), *(extra or [])]


def synthetic_train_data(out: Path, rows: int, seed: int) -> Path:
    """A prepared training layout of ``rows`` synthetic counting questions (one picture each)."""
    from vppo.data.train_data import synthetic_example, write_layout

    def examples():
        for i in range(rows):
            row, image = synthetic_example(i, seed=seed)
            yield row, [image]

    return write_layout(examples(), out, source="synthetic")


def hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(shard))
    return weights


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
