"""The README's main job, end to end: `snakemake --cores all` on the embedded default (CPU, tiny model).

Runs once, in a copy of the checkout, and then checks what a user would look at: every table with every
method and benchmark, the figures, the report, one cell per (method, benchmark), and that Snakemake
afterwards considers the whole DAG (and any single cell) up to date.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import planned_jobs, rule_counts

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tracked_files() -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 0 and done.stdout:
        return [p for p in done.stdout.split("\0") if p]
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A copy of the checkout (tracked files only) after the default DAG has run in it."""
    repo = tmp_path_factory.mktemp("checkout")
    for rel in _tracked_files():
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all"], cwd=repo, capture_output=True,
                          text=True, timeout=1500)
    if done.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((repo / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake --cores all failed:\n{done.stderr[-5000:]}\n{logs}")
    return repo


def _config() -> dict:
    return yaml.safe_load((ROOT / "workflow" / "config" / "default.yaml").read_text())


def test_every_table_has_every_method_and_benchmark(smoke_run):
    config = _config()
    for name, spec in config["tables"].items():
        for ext in ("md", "csv", "tex"):
            assert (smoke_run / "results" / "tables" / f"{name}.{ext}").stat().st_size > 0
        with open(smoke_run / "results" / "tables" / f"{name}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        present = {(r["method"], r["benchmark"]) for r in rows if r["status"] == "ok"}
        expected = {(m, b) for m in spec["methods"] for b in config["benchmarks"]}
        assert expected <= present, f"{name}: missing {sorted(expected - present)}"
        assert config["label"] in (smoke_run / "results" / "tables" / f"{name}.md").read_text()


def test_one_result_per_cell_with_provenance(smoke_run):
    config = _config()
    methods = config["models"]["tiny"]["methods"]
    for method in methods:
        for bench in config["benchmarks"]:
            result = json.loads((smoke_run / "results" / "eval" / "tiny" / method / f"{bench}.json").read_text())
            assert (result["model"], result["method"], result["benchmark"]) == ("tiny", method, bench)
            assert result["k"] == 8 and result["n_samples"] == 8 * result["n_questions"] > 0
            assert result["backend"] == "hf" and result["seed"] == 0 and result["checkpoint_sha256"]


def test_training_logs_figures_and_report(smoke_run):
    config = _config()
    trained = [m for m in config["models"]["tiny"]["methods"] if m != "base"]
    for method in trained:
        lines = (smoke_run / "results" / "train" / "tiny" / method / "training_log.jsonl").read_text().splitlines()
        assert lines, method
        assert (smoke_run / "results" / "checkpoints" / "tiny" / method / "config.json").is_file()
    figures = smoke_run / "results" / "figures"
    assert len(list(figures.glob("*.png"))) >= 3 and (figures / "index.json").is_file()
    report = (smoke_run / "results" / "report.html").read_text()
    for method in config["models"]["tiny"]["methods"]:
        assert method in report
    assert (smoke_run / "logs" / "benchmarks" / "train" / "tiny" / "vppo.tsv").is_file()


def test_warm_started_base_gives_the_smoke_run_real_rewards(smoke_run):
    """The default base (tiny-warm) guesses boxed answers: rewards, kept groups and table cells are not all 0."""
    config = _config()
    assert config["models"]["tiny"]["base"] == "tiny-warm"
    info = json.loads((smoke_run / "resources" / "models" / "tiny" / "base" / "vppo_tiny.json").read_text())
    assert info["warm_start"]["steps"] > 0
    trained = [m for m in config["models"]["tiny"]["methods"] if m != "base"]
    logs = {m: [json.loads(line) for line in
                (smoke_run / "results" / "train" / "tiny" / m / "training_log.jsonl").read_text().splitlines()]
            for m in trained}
    assert any(step["reward"] > 0 for m in trained for step in logs[m]), logs
    # (Online filtering filled every vppo rollout with mixed-reward groups: a run that cannot fill one stops.)
    assert any(step["alpha_max"] > step["alpha_min"] for step in logs["vppo"]), logs["vppo"]
    with open(smoke_run / "results" / "tables" / "main.csv", newline="") as handle:
        cells = [float(r["ours"]) for r in csv.DictReader(handle) if r["status"] == "ok"]
    assert any(value > 0 for value in cells), cells


def test_nothing_left_to_do_and_a_lost_cell_reruns_alone(smoke_run):
    def dry(*targets: str) -> str:
        done = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1", *targets],
                              cwd=smoke_run, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    assert "Nothing to be done" in dry()
    assert "Nothing to be done" in dry("results/eval/tiny/vppo/geo3k.json")
    (smoke_run / "results" / "eval" / "tiny" / "vppo" / "geo3k.json").unlink()
    counts = rule_counts(planned_jobs(dry("results/eval/tiny/vppo/geo3k.json")))
    assert counts == {"eval_benchmarks": 1}  # finished training and conversion are never redone
