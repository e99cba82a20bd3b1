"""The 32B job's layout in miniature, end to end through Snakemake's SLURM profile on a local two-node Slurm
(tests/slurm/local_slurm.sh: two slurmd on this machine whose node names do not resolve): a preset whose recipe
has ``num_nodes: 2`` trains through the real launcher (one ``accelerate launch`` per node under one ``srun`` step,
main address from Slurm's ``NodeAddr``, DeepSpeed ZeRO-3 over gloo, vLLM colocated at tensor parallel 2 across the
two nodes), converts, and evaluates with ``--backend vllm`` at tensor parallel 2 (the 32B evaluation's shape).

Snakemake runs in the driver environment (the main CPU one: ``VPPO_DRIVER_PYTHON``, set by tests/run.sh), every
job in this vLLM environment (``VPPO_PYTHON``), as a cluster runs Snakemake beside the GPU jobs' environment.
Also: ``srun --kill-on-bad-exit=1`` ends the other node at once when one node's launcher dies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distributed import ROOT

CLUSTER = ROOT / "tests" / "slurm" / "local_slurm.sh"
PROFILE = ["--profile", "slurm", "--sdm", "env-modules", "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "2"]


def _driver_python() -> str:
    driver = os.environ.get("VPPO_DRIVER_PYTHON") or shutil.which("python3") or "python3"
    if subprocess.run([driver, "-c", "import snakemake"], capture_output=True).returncode != 0:
        pytest.fail(f"{driver} has no snakemake: set VPPO_DRIVER_PYTHON to the main environment's python "
                    "(tests/run.sh does)")
    return driver


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.environ.get("VPPO_SKIP_SLURM_TESTS") == "1":
        pytest.skip("VPPO_SKIP_SLURM_TESTS=1")
    if not shutil.which("slurmctld"):
        pytest.fail("Slurm is not installed: `bash tests/slurm/local_slurm.sh install` (tests/run.sh does)")
    folder = tmp_path_factory.mktemp("slurm2")
    done = subprocess.run(["bash", str(CLUSTER), "start", str(folder), "2"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "VPPO_TEST_SLURM_CPUS": "2"})
    if done.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], timeout=120)
        pytest.fail(f"local Slurm did not start:\n{done.stdout}\n{done.stderr}")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{folder / 'bin'}:{os.environ['PATH']}",
           "VPPO_SLURM_ACCOUNT": "vppo-test", "VPPO_SLURM_PARTITION": "debug"}
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], timeout=120)


def _two_node_checkout(target: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target / rel)
    recipes = target / "vppo" / "training" / "recipes"
    recipe = yaml.safe_load((recipes / "cpu_zero3.yaml").read_text())
    recipe.update(description="cpu_zero3 on two nodes, one rank each", num_nodes=2, cpu_ranks_per_node=1)
    (recipes / "cpu_zero3_2nodes.yaml").write_text(yaml.safe_dump(recipe))
    config = yaml.safe_load((target / "workflow" / "config" / "default.yaml").read_text())
    config["preset"] = "twonode"
    config["benchmarks"] = ["geo3k"]
    config["models"] = {"tiny2n": {
        "base": "tiny-vllm", "recipe": "cpu_zero3_2nodes", "launcher": "multinode", "methods": ["vppo"],
        "train_resources": {"cpus": 2, "mem_mb": 12000, "runtime": 20},
        "eval_resources": {"gpus": 2, "cpus": 2, "mem_mb": 12000, "runtime": 20}}}
    config["eval"].update(backend="vllm", max_new_tokens=12, group_benchmarks=False)
    config["tables"] = {"main": {"model": "tiny2n", "paper_model": "qwen2.5-vl-32b", "methods": ["vppo"]}}
    config["analysis"] = {**config["analysis"], "model": "tiny2n", "methods": ["vppo"]}
    (target / "workflow" / "config" / "twonode.yaml").write_text(yaml.safe_dump(config))
    # The preflight (`vppo doctor` on a GPU node) would rightly fail here: the nodes' GPUs are empty files. Its
    # findings file stands in, as on a cluster where the check already ran.
    preflight = target / "results" / "preflight" / "doctor.txt"
    preflight.parent.mkdir(parents=True)
    preflight.write_text("preflight not run: local test cluster, its GPUs are empty files\n")
    return target


def test_two_node_training_converts_and_evaluates_at_tensor_parallel_two(slurm, tmp_path):
    repo = _two_node_checkout(tmp_path / "checkout")
    target = "results/eval/tiny2n/vppo/geo3k.json"
    env = {**slurm, "VPPO_PYTHON": sys.executable, "VPPO_CHECK_WEIGHT_SYNC": "1"}
    try:
        done = subprocess.run([_driver_python(), "-m", "snakemake", "--cores", "all", *PROFILE, "--configfile",
                               "workflow/config/twonode.yaml", "--", target], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=1500)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"snakemake ran past its limit:\n{_logs(repo)}") from exc
    assert done.returncode == 0, f"{done.stderr[-5000:]}\n{_logs(repo)}"

    train_log = (repo / "logs" / "train" / "tiny2n" / "vppo.log").read_text()
    # one srun step over both nodes, rendezvous at Slurm's NodeAddr (node names do not resolve here)
    step = next(line for line in train_log.splitlines() if line.startswith("srun "))
    assert "--nodes=2" in step and "--kill-on-bad-exit=1" in step
    assert re.search(r"--main_process_ip 127\.0\.0\.1\b", step)
    summary = json.loads((repo / "results" / "train" / "tiny2n" / "vppo" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["recipe"]["num_nodes"] == 2 and summary["steps"] == 2
    log = [json.loads(line) for line in (repo / "results" / "train" / "tiny2n" / "vppo" / "training_log.jsonl")
           .read_text().splitlines()]
    assert [r["weight_sync_max_diff"] for r in log if r.get("weight_sync_checks")] == [0.0]
    converted = json.loads((repo / "results" / "checkpoints" / "tiny2n" / "vppo" / "vppo_convert.json").read_text())
    assert converted["max_logit_diff"] <= 1e-4
    result = json.loads((repo / target).read_text())
    assert result["backend"] == "vllm" and result["tensor_parallel_size"] == 2 and result["n_questions"] > 0


def test_one_node_failing_ends_the_other_at_once(slurm, tmp_path):
    """The planned step with its payload swapped: node 2's task fails at once, node 1's would sleep 10 minutes.
    With --kill-on-bad-exit=1 the job ends within seconds (without it: when node 1's sleep, or in training its
    collective's 30-minute timeout, ends)."""
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
unset SLURM_JOB_NODELIST SLURM_NODELIST
exec {sys.executable} -c '
import subprocess
from vppo.training.launch import plan_launch
train = ["--model", "m", "--data", "d", "--method", "vppo", "--work-dir", "w", "--out", "o"]
(step,) = plan_launch(train + ["--recipe", "cpu_zero3", "--set", "num_nodes=2", "--set", "cpu_ranks_per_node=1"]).commands
step = step[:step.index("bash")] + ["bash", "-c", "if [ $SLURM_PROCID = 1 ]; then exit 3; fi; sleep 600"]
print("STEP", " ".join(step), flush=True)
raise SystemExit(subprocess.run(step).returncode)
'
""")
    start = time.monotonic()
    done = subprocess.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                           "--mem=1000", "--time=15", f"--output={tmp_path / 'job.out'}", str(script)],
                          env={**slurm, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert done.returncode != 0 and "--kill-on-bad-exit=1" in (tmp_path / "job.out").read_text()
    assert elapsed < 60, f"the surviving node ran on for {elapsed:.0f} s"


def _logs(repo: Path) -> str:
    logs = sorted((repo / ".snakemake" / "slurm_logs").rglob("*.log")) + sorted((repo / "logs").rglob("*.log"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs[-10:])
