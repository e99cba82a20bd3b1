"""The DAG under a real Slurm: `snakemake --profile slurm` with the real executor plugin, sbatch, the jobstep's
srun and our training launcher, on a local cluster started by tests/slurm/local_slurm.sh (munged, slurmctld and
slurmd on localhost; every node declares 8 GPUs that are empty files, so GPU requests schedule on a CPU machine).

Software deployment is switched from the profile's conda to env-modules (nothing deployed: the CI machine has no
conda), and the plugin polls with squeue (no accounting daemon, so no sacct), as tests/test_workflow.py does for
dry-runs. Everything else is the profile a user gets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow_e2e import _tracked_files

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "tests" / "slurm" / "local_slurm.sh"
PROFILE_OVERRIDES = ["--profile", "slurm", "--sdm", "env-modules", "--slurm-status-command", "squeue",
                     "--slurm-init-seconds-before-status-checks", "2"]
pytestmark = pytest.mark.slow


def _start_cluster(folder: Path, nodes: int) -> dict[str, str]:
    if os.environ.get("VPPO_SKIP_SLURM_TESTS") == "1":
        pytest.skip("VPPO_SKIP_SLURM_TESTS=1")
    if not shutil.which("slurmctld"):
        pytest.fail("Slurm is not installed: run `tests/slurm/local_slurm.sh install` as root (tests/run.sh does), "
                    "or set VPPO_SKIP_SLURM_TESTS=1 to skip the Slurm tier")
    done = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(folder), str(nodes)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "VPPO_TEST_SLURM_CPUS": "2"})
    if done.returncode != 0:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], timeout=120)
        pytest.fail(f"local Slurm did not start:\n{done.stdout}\n{done.stderr}")
    return {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{folder / 'bin'}:{os.environ['PATH']}",
            "VPPO_SLURM_ACCOUNT": "vppo-test", "VPPO_SLURM_PARTITION": "debug"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Environment (SLURM_CONF, account, partition) of a two-node local cluster (two slurmd on this host, 2 CPUs
    and 8 fake GPUs each), stopped after the module."""
    folder = tmp_path_factory.mktemp("slurm")
    env = _start_cluster(folder, 2)
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], timeout=120)


def copy_checkout(target: Path) -> Path:
    for rel in _tracked_files():
        if (ROOT / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target / rel)
    return target


def run_profile(repo: Path, env: dict[str, str], *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`snakemake --cores all --profile slurm ...` in ``repo``; on failure the error shows the Slurm job logs."""
    try:
        done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", *PROFILE_OVERRIDES, *args],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"snakemake --profile slurm {' '.join(args)} ran past {timeout}s:\n"
                             f"{(exc.stderr or b'')[-4000:]!r}\n{_job_logs(repo)}") from None
    if done.returncode != 0:
        raise AssertionError(f"snakemake --profile slurm {' '.join(args)} failed:\n{done.stderr[-6000:]}\n"
                             f"{_job_logs(repo)}")
    return done


def _job_logs(repo: Path) -> str:
    logs = sorted((repo / ".snakemake" / "slurm_logs").rglob("*.log")) + sorted((repo / "logs").rglob("*.log"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2500:]}" for p in logs[-12:])


def slurm_job_ids(repo: Path, rule: str) -> list[str]:
    """Slurm job ids of a rule's jobs (the profile keeps every job's log, named <job id>.log)."""
    return [p.stem for p in (repo / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")]


def scontrol_job(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """`scontrol show job -d ID` as key=value pairs (finished jobs stay visible: MinJobAge is an hour)."""
    out = subprocess.run(["scontrol", "show", "job", "-d", job_id], env=env, capture_output=True, text=True,
                         check=True).stdout
    return dict(re.findall(r"(\w[\w:/]*)=(\S*)", out))


MULTI_NODE_JOB = """#!/bin/bash
# A multi-node training rule's shell runs in the batch script (mpi=srun), where Snakemake's jobstep has dropped
# SLURM_JOB_NODELIST: the launcher finds the nodes through squeue. Its srun step is run as planned, with the
# payload replaced by a report of where each task landed (accelerate across hosts is not run here).
unset SLURM_JOB_NODELIST SLURM_NODELIST
export VPPO_CPUS_PER_NODE=2
exec {python} -c '
import subprocess
from vppo.training.launch import plan_launch
train = ["--model", "m", "--data", "d", "--method", "vppo", "--work-dir", "w", "--out", "o"]
(step,) = plan_launch(train + ["--recipe", "32b", "--set", "num_nodes=2"]).commands
print("LAUNCH", step[-1], flush=True)
step = step[:step.index("bash")] + ["bash", "-c", "echo $SLURMD_NODENAME $SLURM_PROCID"]
print("STEP", " ".join(step), flush=True)
raise SystemExit(subprocess.run(step).returncode)
'
"""


def test_multi_node_launch_fans_out_one_task_per_node(slurm, tmp_path):
    """The 32B-style fan-out on two real slurmd: node list from squeue inside the allocation, one srun step with
    one task per node holding that node's CPUs and 8 GPUs, ranks 0 and 1 (it started: no nested-step wait), the
    main process at Slurm's address of node1."""
    script = tmp_path / "job.sh"
    script.write_text(MULTI_NODE_JOB.format(python=sys.executable))
    out = tmp_path / "job.out"
    env = {**slurm, "PYTHONPATH": str(ROOT)}
    subprocess.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2", "--gres=gpu:8",
                    "--mem=1000", "--time=3", f"--output={out}", str(script)], env=env, check=True,
                   capture_output=True, text=True, timeout=300)
    lines = out.read_text().splitlines()
    step = next(line for line in lines if line.startswith("STEP "))
    assert ("--nodes=2 --ntasks-per-node=1 --nodelist=node1,node2 --kill-on-bad-exit=1 --cpus-per-task=2 "
            "--gres=gpu:8") in step
    # the rendezvous address is node1's NodeAddr: the node names of this cluster resolve nowhere
    launch = next(line for line in lines if line.startswith("LAUNCH "))
    assert "--main_process_ip 127.0.0.1 " in launch
    assert sorted(line for line in lines if line.startswith("node")) == ["node1 0", "node2 1"]


@pytest.fixture(scope="module")
def launcher_checkout(slurm, tmp_path_factory):
    """A checkout copy whose tiny model trains through the accelerate launcher (launcher.yaml)."""
    repo = copy_checkout(tmp_path_factory.mktemp("launcher") / "checkout")
    config = yaml.safe_load((repo / "workflow" / "config" / "default.yaml").read_text())
    config["models"]["tiny"]["launcher"] = "multinode"
    (repo / "launcher.yaml").write_text(yaml.safe_dump(config))
    return repo, config


def test_one_node_gpu_training_job_saves_before_its_time_limit_and_the_retry_resumes(slurm, launcher_checkout):
    """The 7B job's shape (one node, 8 GPUs, the accelerate launcher) on the smoke recipe, with a 6-minute time limit
    and a save margin one second short of it (train.save_margin_minutes 5.99: 359 s).

    The launcher: the executor runs the rule inside its own `srun -n1` step, where a second srun for the node's GPUs
    would wait until the time limit (the old launcher's job was killed at its limit: TIMEOUT, not FAILED below).
    The time limit: the trainer, through the launcher, asks Slurm for the time left, saves at the first rollout
    boundary where another rollout would eat into the margin (always the first: the time from the job's start to
    that boundary is more than the 1 s the margin leaves, on any machine; a 15 s slack was outrun by a fast CI
    machine) and the job exits 75 instead of being killed at the limit; Snakemake's retry (12 minutes) resumes from
    that checkpoint and finishes (the last boundary is the end of training, where no stop is asked). There is no
    periodic checkpoint (save_steps 1000), so without the save the retry started from scratch. The limits are
    generous so that a loaded machine's start-up never reaches them."""
    repo, config = launcher_checkout
    config = yaml.safe_load(yaml.safe_dump(config))
    config["models"]["tiny"]["train_resources"]["runtime"] = 6
    config["train"].update(max_steps=4, retries=1, save_margin_minutes=5.99, set={"save_steps": 1000})
    (repo / "time_limit.yaml").write_text(yaml.safe_dump(config))
    done = run_profile(repo, slurm, "--configfile", "time_limit.yaml", "--set-resources", "train:gres=gpu:8", "--",
                       "results/train/tiny/grpo", timeout=1200)
    jobs = sorted(_train_jobs(repo, "grpo"), key=int)
    assert len(jobs) == 2, f"expected a stopped job and its retry, got {jobs}:\n{done.stderr[-4000:]}\n{_job_logs(repo)}"
    first, second = jobs
    stopped, retried = scontrol_job(first, slurm), scontrol_job(second, slurm)
    # the job ended by itself before its limit (its Snakemake exits 1; the rule's shell, the launcher, 75)
    assert (stopped["JobState"], stopped["TimeLimit"]) == ("FAILED", "00:06:00"), done.stderr[-5000:]
    assert "returned non-zero exit status 75" in done.stderr
    assert (retried["JobState"], retried["NumNodes"], retried["JOB_GRES"]) == ("COMPLETED", "1", "gpu:8")
    for job in jobs:
        job_log = next((repo / ".snakemake" / "slurm_logs" / "rule_train").rglob(f"{job}.log")).read_text()
        assert "workflow/scripts/launch_train.sh --" in job_log and "step creation temporarily disabled" not in job_log
    summary = yaml.safe_load((repo / "results" / "train" / "tiny" / "grpo" / "train_summary.json").read_text())
    resumed = Path(summary["resumed_from"]).name
    assert resumed.startswith("checkpoint-") and 1 <= int(resumed.split("-")[1]) < 4
    assert summary["steps"] == 4 and summary["world_size"] == 1


def _train_jobs(repo: Path, method: str) -> list[str]:
    """Slurm job ids of the training jobs of one method (the checkout is shared by the tests above)."""
    return [job for job in slurm_job_ids(repo, "train")
            if f"method={method}" in next((repo / ".snakemake" / "slurm_logs").rglob(f"{job}.log")).read_text()]


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    """A checkout copy after the default DAG ran to completion through --profile slurm."""
    repo = copy_checkout(tmp_path_factory.mktemp("checkout"))
    run_profile(repo, slurm, timeout=1500)
    return repo


def test_default_dag_completes_under_slurm(slurm_run, slurm):
    config = yaml.safe_load((ROOT / "workflow" / "config" / "default.yaml").read_text())
    for name in config["tables"]:
        assert (slurm_run / "results" / "tables" / f"{name}.csv").stat().st_size > 0
    assert (slurm_run / "results" / "report.html").is_file()
    methods = config["models"]["tiny"]["methods"]
    trained = [m for m in methods if m != "base"]
    # Every job went through sbatch: one Slurm job (and its kept log) per training cell, each finished.
    train_jobs = slurm_job_ids(slurm_run, "train")
    assert len(train_jobs) == len(trained)
    for job in train_jobs:
        info = scontrol_job(job, slurm)
        assert info["JobState"] == "COMPLETED" and info["Account"] == "vppo-test" and info["Partition"] == "debug"
    assert len(slurm_job_ids(slurm_run, "eval_benchmarks")) == len(methods)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1"], cwd=slurm_run,
                          capture_output=True, text=True, timeout=600)
    assert "Nothing to be done" in done.stdout + done.stderr
