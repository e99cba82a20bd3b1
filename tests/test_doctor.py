"""`vppo doctor`: the preflight names what is missing (driver, CUDA torch, vLLM, disk) and exits 2; a CPU job's
needs pass here. nvidia-smi does not exist on the CPU machines: a stand-in script plays a node's driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vppo.doctor import MIN_DRIVER, Needs, check_driver, diagnose, version_tuple

ROOT = Path(__file__).resolve().parents[1]


def doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vppo", "doctor", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def fake_driver(folder: Path, version: str) -> dict:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho {version}\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_cpu_needs_pass_and_the_findings_are_written(tmp_path):
    out = tmp_path / "doctor.txt"
    done = doctor("--min-free-gb", "0.001", "--path", str(tmp_path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in out.read_text().splitlines()] == ["python:", "torch:", "free"]


def test_a_gpu_job_without_a_driver_fails_naming_it(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = doctor("--gpus", "1", "--min-free-gb", "0.001", "--out", str(tmp_path / "never.txt"),
                  env={"PATH": f"{empty}:{Path(sys.executable).parent}"})
    assert done.returncode == 2 and not (tmp_path / "never.txt").exists()
    assert "FAIL nvidia driver: nvidia-smi not found" in done.stdout
    (last,) = done.stderr.strip().splitlines()
    assert last.startswith("vppo doctor: nvidia driver: nvidia-smi not found")


@pytest.mark.parametrize("version, ok", [("535.104.05", False), ("580.65.06", True), ("590.12", True)])
def test_driver_version_against_cuda_13(tmp_path, monkeypatch, version, ok):
    monkeypatch.setenv("PATH", fake_driver(tmp_path, version)["PATH"])
    finding = check_driver(Needs(gpus=8, vllm=False, min_free_gb=0, path=tmp_path))
    assert finding.ok is ok and version in finding.detail
    assert check_driver(Needs(gpus=0, vllm=False, min_free_gb=0, path=tmp_path)) is None  # CPU job: not asked
    assert version_tuple("580.65.06") >= MIN_DRIVER > version_tuple("575.99")


def test_too_little_disk_and_missing_vllm_are_named(tmp_path):
    findings = {f.name: f for f in diagnose(Needs(gpus=0, vllm=True, min_free_gb=1e12, path=tmp_path / "work"))}
    assert not findings["free disk"].ok and str(tmp_path / "work") in findings["free disk"].detail
    import importlib.util

    assert findings["vllm"].ok is (importlib.util.find_spec("vllm") is not None)
    done = doctor("--min-free-gb", "1e12", "--path", str(tmp_path))
    assert done.returncode == 2 and "free disk:" in done.stderr
