"""What `snakemake -n --profile slurm --config preset=paper` asks of a cluster: every job fits one partition
slot (runtime within cluster.max_runtime on every attempt), names its node count, sizes memory from the model,
and training and evaluation get the GPUs and layout the recipes need."""

from __future__ import annotations

import pytest

from test_workflow import SLURM, config_of, copy_checkout, dry_run

MAX_NODE_MEMORY_MB = 1_000_000  # a 1 TB node: the smallest 8-GPU node of common clusters


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A fresh copy: in the checkout itself, after the README's main command, the plan saw that run's outputs and
    planned the preflight job alone."""
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module", params=[1, 3], ids=["first-attempt", "third-attempt"])
def paper_jobs(request, checkout):
    jobs = dry_run(*SLURM, "--config", "preset=paper", "--attempt", str(request.param), "--printshellcmds",
                   "--set-resources", "train:socket_ifname='ib0'", cwd=checkout)  # as a profile's set-resources names it
    return request.param, [job for job in jobs if "runtime" in job["resources"]]


def _by_rule_and_model(jobs):
    return {(job["rule"], job["wildcards"].get("model")): job["resources"] for job in jobs}


def test_every_cluster_job_fits_a_partition_slot_and_a_node(paper_jobs):
    attempt, jobs = paper_jobs
    limit = config_of("paper")["cluster"]["max_runtime"]
    assert jobs
    for job in jobs:
        resources = job["resources"]
        assert 0 < int(resources["runtime"]) <= limit, job
        assert "nodes" in resources, job  # never left to Slurm: --gpus=4 alone may span two nodes
        assert 0 < int(resources["mem_mb"]) <= MAX_NODE_MEMORY_MB, job
    training = [int(job["resources"]["runtime"]) for job in jobs if job["rule"] == "train"]
    assert training and max(training) == limit  # 7B's 48 h and 32B's 72 h both run in 48 h slots
    if attempt == 3:  # shorter jobs still grow on retries (preemption, slow nodes), up to the limit
        evals = {int(job["resources"]["runtime"]) for job in jobs if job["rule"] == "eval_benchmark"}
        assert evals == {480 * 3, 720 * 3}


def test_gpus_nodes_and_memory_follow_the_models(paper_jobs):
    _, jobs = paper_jobs
    resources = _by_rule_and_model(jobs)
    small, big = resources[("train", "qwen2.5-vl-7b")], resources[("train", "qwen2.5-vl-32b")]
    assert (small["nodes"], small["gres"], small["cpus_per_task"]) == ("1", "gpu:8", "64") and "mpi" not in small
    assert (big["nodes"], big["gres"], big["mpi"], big["tasks"]) == ("4", "gpu:8", "srun", "4")
    eval_big = resources[("eval_benchmark", "qwen2.5-vl-32b")]
    assert (eval_big["nodes"], eval_big["gpu"]) == ("1", "4")
    # Memory grows with the model (params_b) instead of a flat 900 GB per node.
    for rule in ("train", "eval_benchmark", "convert"):
        assert int(resources[(rule, "qwen2.5-vl-7b")]["mem_mb"]) < int(resources[(rule, "qwen2.5-vl-32b")]["mem_mb"])
    assert int(small["mem_mb"]) < 300_000 and int(resources[("convert", "qwen2.5-vl-32b")]["mem_mb"]) > 200_000


def test_each_training_rank_gets_its_share_of_the_cpus_and_the_profiles_network_interface(paper_jobs):
    """OMP_NUM_THREADS was the job's 64 CPUs for each of 8 ranks (512 threads on 64 cores); now the node's CPUs are
    divided among its ranks and colocated vLLM engines. The socket_ifname resource names the interface gloo and
    NCCL use."""
    _, jobs = paper_jobs
    commands = {job["wildcards"]["model"]: job["shell"] for job in jobs if job["rule"] == "train"}
    assert "OMP_NUM_THREADS=4 GLOO_SOCKET_IFNAME=ib0 NCCL_SOCKET_IFNAME=ib0 " in commands["qwen2.5-vl-7b"]
    assert "OMP_NUM_THREADS=6 GLOO_SOCKET_IFNAME=ib0 NCCL_SOCKET_IFNAME=ib0 " in commands["qwen2.5-vl-32b"]


def test_tables_figures_and_report_are_sized_as_light_jobs(paper_jobs):
    attempt, jobs = paper_jobs
    light = [job["resources"] for job in jobs if job["rule"] in ("table", "figures", "report")]
    assert len(light) == 5
    for resources in light:
        assert int(resources["mem_mb"]) <= 8000 and int(resources["runtime"]) <= 30 * attempt
        assert resources["cpus_per_task"] == "1"
