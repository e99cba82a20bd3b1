"""Crash recovery of the DAG, as the README's "Crash recovery" section tells it: Snakemake killed (-9) in the
middle of a grouped evaluation job; `--unlock`, then `--rerun-incomplete` finishes it, and the benchmarks the
killed job had finished are reused, not evaluated again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from test_workflow import ROOT, config_of, copy_checkout, snakemake

pytestmark = pytest.mark.slow
BENCHMARKS = ["geo3k", "mmk12", "wemath"]


def test_readme_tells_how_to_recover_from_a_crash():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Crash recovery"):]
    assert "--unlock" in section and "--rerun-incomplete" in section


def eval_status(repo, configfile) -> dict:
    """What `vppo status` says of the tiny/base evaluation."""
    from vppo.reporting.status import collect

    (row,) = collect(repo, {}, configfile)["cells"]
    return row["eval"]


def test_a_killed_group_keeps_its_finished_benchmarks(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    config = config_of("default")
    config.update(benchmarks=BENCHMARKS)
    config["models"]["tiny"]["methods"] = ["base"]
    config["tables"] = {"main": {"model": "tiny", "paper_model": "qwen2.5-vl-7b", "methods": ["base"]}}
    config.pop("analysis")
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    targets = [f"results/eval/tiny/base/{b}.json" for b in BENCHMARKS]
    args = ["--cores", "1", "--configfile", str(path), "--", *targets]

    assert eval_status(repo, path)["state"] == "waiting"  # (and the status code is imported: its calls below are quick)
    job = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=repo, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = repo / "work" / "eval" / "tiny" / "base"
    cells = repo / "results" / "eval" / "tiny" / "base"

    def finished_results() -> dict[str, bytes]:  # wherever the job keeps them; not the hidden hash cache
        return {p.name: p.read_bytes() for folder in (work, cells) for p in folder.glob("*.json")
                if not p.name.startswith(".")}

    deadline = time.monotonic() + 900
    while not finished_results() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    running = eval_status(repo, path)
    os.killpg(job.pid, signal.SIGKILL)  # Snakemake and the evaluation it runs, as a crashed node would
    job.wait()
    assert running == {"state": "running", "done": 0, "total": len(BENCHMARKS)}  # `vppo status` during the run
    assert eval_status(repo, path)["state"] == "failed"  # and after the crash
    finished = finished_results()
    assert finished and len(finished) < len(BENCHMARKS), finished  # killed in the middle of the group
    cells.mkdir(parents=True, exist_ok=True)
    for name, content in finished.items():  # as a kill while the job copied its results out would leave them
        if not (cells / name).exists():
            (cells / name).write_bytes(content[: len(content) // 2])

    stopped = snakemake(*args, cwd=repo, check=False)  # the lock or the incomplete files: the README's two steps
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and ("--unlock" in said or "--rerun-incomplete" in said), said
    snakemake("--unlock", *args, cwd=repo)
    snakemake("--rerun-incomplete", *args, cwd=repo)  # deletes the group's declared outputs, reruns the job

    log = (repo / "logs" / "eval" / "tiny" / "base.log").read_text()
    for name, content in finished.items():
        benchmark = name.removesuffix(".json")
        assert f"{benchmark}: reusing" in log
        assert (cells / name).read_bytes() == content
    assert all((repo / target).is_file() for target in targets)
