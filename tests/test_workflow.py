"""The Snakemake DAG (issue 5): lint, dry-runs of every preset, single-cell targets, config errors.

Snakemake is called by subprocess (its Python API changed within 9.x). Dry-runs use `--profile slurm` as a
user types it; the CI machine has no conda, so those dry-runs switch software deployment to env-modules
(no `envmodules:` directive exists, so nothing is deployed) instead of the profile's conda.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SLURM = ["--profile", "slurm", "--sdm", "env-modules"]


def copy_checkout(dest: Path) -> Path:
    """The checkout's tracked files, without any outputs, in ``dest``: the tests then see a fresh clone even
    where `snakemake --cores all` has already run in the checkout."""
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 0 and done.stdout:
        files = [p for p in done.stdout.split("\0") if p]
    else:  # not a git checkout (an unpacked archive): every file outside the outputs Snakemake writes
        outputs = {".git", ".snakemake", "resources", "work", "logs", "__pycache__"}
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not outputs & set(p.relative_to(ROOT).parts)
                 and not (p.relative_to(ROOT).parts[0] == "results" and p.relative_to(ROOT).parts[1] != "reference")]
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="module", autouse=True)
def checkout(tmp_path_factory) -> Path:
    """Every Snakemake call of this module runs in one fresh copy of the checkout (dry-runs write nothing)."""
    global CHECKOUT
    CHECKOUT = copy_checkout(tmp_path_factory.mktemp("checkout"))
    return CHECKOUT


CHECKOUT: Path | None = None


def snakemake(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cwd = cwd or CHECKOUT
    # never the checkout itself: the README's main command may have run there, and a plan would see its outputs
    assert cwd is not None, "snakemake(): pass cwd= (a copy_checkout()), or use this module's checkout fixture"
    done = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def planned_jobs(output: str) -> list[dict]:
    """Jobs of a dry-run: rule, wildcards, resources (and shell command) of each `rule NAME:` block."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", output):
        head = re.match(r"rule (\w+):", block)
        if not head:
            continue
        job = {"rule": head.group(1), "wildcards": {}, "resources": {}}
        for key in ("wildcards", "resources"):
            line = re.search(rf"^\s+{key}: (.*)$", block, re.MULTILINE)
            if line:
                job[key] = dict(pair.split("=", 1) for pair in line.group(1).split(", "))
        shell = re.search(r"^Shell command: (.*)$", block, re.MULTILINE)  # with --printshellcmds
        if shell:
            job["shell"] = shell.group(1)
        jobs.append(job)
    return jobs


def dry_run(*args: str, cwd: Path | None = None) -> list[dict]:
    done = snakemake("--dry-run", "--cores", "all", *args, cwd=cwd)
    return planned_jobs(done.stdout + done.stderr)


def rule_counts(jobs: list[dict]) -> Counter:
    return Counter(job["rule"] for job in jobs)


def config_of(preset: str) -> dict:
    return yaml.safe_load((ROOT / "workflow" / "config" / f"{preset}.yaml").read_text())


def test_lint_is_clean():
    done = snakemake("--lint", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr


def test_default_dry_run_trains_converts_and_evaluates_every_method():
    config = config_of("default")
    spec = config["models"]["tiny"]
    trained = [m for m in spec["methods"] if m != "base"]
    counts = rule_counts(dry_run())
    assert counts["train"] == counts["convert"] == len(trained)
    assert counts["eval_benchmarks"] == len(spec["methods"])  # grouped: one job per (model, method)
    assert counts["table"] == 3 and counts["figures"] == 1 and counts["report"] == 1
    assert counts["analyze_dependency"] == len(config["analysis"]["methods"])


def test_model_family_reaches_every_model_fetch():
    """`--config model_family=qwen3-vl` runs the default DAG on the tiny Qwen3-VL: the base model is built as one."""
    done = snakemake("--dry-run", "--cores", "all", "--printshellcmds", "--config", "model_family=qwen3-vl")
    fetches = [line for line in (done.stdout + done.stderr).splitlines() if "vppo fetch-model" in line]
    assert fetches and all("--family qwen3-vl" in line for line in fetches)
    refused = snakemake("--dry-run", "--cores", "all", "--config", "model_family=llava", check=False)
    assert refused.returncode != 0 and "'llava' is not one of ['qwen2.5-vl', 'qwen3-vl']" in refused.stdout + refused.stderr


def test_paper_dry_run_under_the_slurm_profile_resolves_every_job_with_resources():
    config = config_of("paper")
    jobs = dry_run(*SLURM, "--config", "preset=paper")
    counts = rule_counts(jobs)
    n_bench = len(config["benchmarks"])
    cells = sum(len(spec["methods"]) for spec in config["models"].values())
    trained = sum(len([m for m in spec["methods"] if m != "base"]) for spec in config["models"].values())
    assert counts["eval_benchmark"] == cells * n_bench == (9 + 3) * 8
    assert counts["train"] == counts["convert"] == trained == 8 + 3
    assert counts["fetch_base_model"] == 2 and counts["table"] == 3

    train = {job["wildcards"]["model"]: job["resources"] for job in jobs if job["rule"] == "train"}
    assert train["qwen2.5-vl-7b"]["nodes"] == "1" and train["qwen2.5-vl-7b"]["gres"] == "gpu:8"
    assert "mpi" not in train["qwen2.5-vl-7b"]  # one node: the plugin's own srun runs the launcher
    big = train["qwen2.5-vl-32b"]
    assert (big["nodes"], big["gres"], big["mpi"], big["tasks"]) == ("4", "gpu:8", "srun", "4")
    assert big["tasks_per_gpu"] == "0" and big["cpus_per_task"] == "64"  # never capped by --cores all
    evals = {(job["wildcards"]["model"], job["resources"]["gpu"]) for job in jobs if job["rule"] == "eval_benchmark"}
    assert evals == {("qwen2.5-vl-7b", "1"), ("qwen2.5-vl-32b", "4")}


def test_qwen3vl_paper_dry_run_under_the_slurm_profile_sizes_jobs_from_the_8b_model():
    config = config_of("paper_qwen3vl")
    done = snakemake("--dry-run", "--cores", "all", "--printshellcmds", *SLURM, "--config", "preset=paper_qwen3vl")
    jobs = planned_jobs(done.stdout + done.stderr)
    counts = rule_counts(jobs)
    spec = config["models"]["qwen3-vl-8b"]
    trained = len([m for m in spec["methods"] if m != "base"])
    assert counts["train"] == counts["convert"] == trained and counts["table"] == 2
    assert counts["eval_benchmark"] == len(spec["methods"]) * len(config["benchmarks"])
    assert "vppo fetch-model Qwen/Qwen3-VL-8B-Instruct resources/models/qwen3-vl-8b/base --family qwen3-vl" in done.stdout
    train = next(job["resources"] for job in jobs if job["rule"] == "train")
    assert (train["nodes"], train["gres"], train["mem_mb"]) == ("1", "gpu:8", "204800")  # 8 x 2 B x 8.8e9 + 64 GB
    evals = {(job["resources"]["gpu"], job["resources"]["mem_mb"]) for job in jobs if job["rule"] == "eval_benchmark"}
    assert evals == {("1", "49600")}


def test_released_dry_run_evaluates_published_checkpoints_without_training():
    counts = rule_counts(dry_run(*SLURM, "--config", "preset=released"))
    assert counts["train"] == 0 and counts["convert"] == 0 and counts["prepare_train_data"] == 0
    assert counts["fetch_released_model"] == 2
    assert counts["eval_benchmark"] == 3 * 8  # 7B base + 7B VPPO + 32B VPPO


def test_single_cell_target_schedules_only_its_own_chain():
    jobs = dry_run(*SLURM, "--config", "preset=paper", "--", "results/eval/qwen2.5-vl-7b/vppo/geo3k.json")
    assert rule_counts(jobs) == Counter({"preflight": 1, "fetch_base_model": 1, "prepare_train_data": 1,
                                         "prepare_eval_data": 1, "train": 1, "convert": 1, "eval_benchmark": 1})
    assert {job["wildcards"]["method"] for job in jobs if "method" in job["wildcards"]} == {"vppo"}
    base_cell = dry_run(*SLURM, "--config", "preset=paper", "--", "results/eval/qwen2.5-vl-7b/base/mmk12.json")
    assert rule_counts(base_cell) == Counter({"preflight": 1, "fetch_base_model": 1, "prepare_eval_data": 1,
                                              "eval_benchmark": 1})


def test_slurm_profile_is_found_by_its_bare_name():
    done = snakemake("--dry-run", "--cores", "all", *SLURM, "--config", "preset=released")
    assert "Using profile slurm" in done.stdout + done.stderr


# Config errors (a misspelt key, a method name, an unknown preset, a check without candidate) and the check
# rule's options are unit-tested without Snakemake in tests/test_workflow_plan.py; one dry-run shows the rule
# wires them in.
def test_check_rule_runs_vppo_check_with_the_plans_options():
    done = snakemake("--dry-run", "--printshellcmds", "--cores", "1", "results/check/mine.md", "--config",
                     "candidate=models/mine", "reference=paper:qwen2.5-vl-7b/vppo")
    command = next(line for line in done.stdout.splitlines() if "vppo check" in line)
    assert "vppo check models/mine --against paper:qwen2.5-vl-7b/vppo" in command
    assert "--seed 0 --backend hf" in command and "--samples" not in command


@pytest.mark.parametrize("preset", ["default", "paper", "paper_qwen3vl", "released"])
def test_every_table_names_configured_methods(preset):
    config = config_of(preset)
    for name, table in config["tables"].items():
        assert set(table["methods"]) <= set(config["models"][table["model"]]["methods"]), name


def test_every_rule_writes_a_log_and_a_benchmark_file():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"\n\s*rule (?=\w+:)", smk.read_text())[1:]
        for block in blocks:
            name = block.split(":", 1)[0]
            body = block.split("\n    rule ", 1)[0]
            assert "\n        log:" in body or "\n    log:" in body, f"{smk.name}: rule {name} has no log"
            assert "benchmark:" in body, f"{smk.name}: rule {name} has no benchmark file"


def test_config_values_reach_the_shell_quoted(tmp_path):
    """A path with a space and ';' works as a data source; a source that is a shell command runs nothing."""
    from vppo.data.train_data import prepare_train_data

    repo = copy_checkout(tmp_path / "repo")
    source = prepare_train_data("synthetic", tmp_path / "my data; touch INJECTED_A", n_rows=2)
    config = config_of("default")
    config["data"] = {"train": {"source": str(source)},
                      "eval": {"source": "fixtures --out x; touch INJECTED_B; echo", "options": {"n_rows": 1}}}
    path = tmp_path / "quoted.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake("--cores", "1", "--configfile", str(path), "--", "resources/data/default/train", cwd=repo)
    assert (repo / "resources" / "data" / "default" / "train" / "manifest.json").is_file()
    failed = snakemake("--cores", "1", "--configfile", str(path), "--", "resources/data/default/eval", cwd=repo,
                        check=False)
    assert failed.returncode != 0
    assert "eval data source 'fixtures --out x; touch INJECTED_B; echo'" in (repo / "logs/data/default/eval.log").read_text()
    assert not list(tmp_path.rglob("INJECTED*")) and not list(Path.cwd().glob("INJECTED*"))
