"""``workflow/scripts/launch_train.sh``: command plans for one process, one node and several SLURM nodes, and
one real single-process CPU run through accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vppo.training.launch import LaunchError, default_port, expand_nodelist, plan_launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflow" / "scripts" / "launch_train.sh"
TRAIN = ["--model", "/m", "--data", "/d", "--method", "vppo", "--work-dir", "/w", "--out", "/o"]
CONFIGS = ROOT / "workflow" / "envs" / "accelerate"


def _flag(command: list[str] | str, name: str) -> str:
    words = command.split() if isinstance(command, str) else command
    return words[words.index(name) + 1]


def test_nodelist_expansion_without_scontrol():
    assert expand_nodelist("gpu[01-03,07],login5") == ["gpu01", "gpu02", "gpu03", "gpu07", "login5"]
    assert expand_nodelist("n[8-10]") == ["n8", "n9", "n10"]
    assert expand_nodelist("single") == ["single"]


def test_cpu_smoke_plan_is_one_accelerate_process():
    plan = plan_launch(TRAIN + ["--recipe", "smoke"], environ={}, config_dir=CONFIGS)
    (command,) = plan.commands
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" in command
    assert _flag(command, "--num_processes") == "1" and _flag(command, "--config_file").endswith("single.yaml")
    assert command[command.index("-m", 3):][:3] == ["-m", "vppo", "train"] and command[-len(TRAIN) - 2:-2] == TRAIN


def test_7b_on_one_slurm_node_runs_deepspeed_zero3_on_eight_gpus_in_place():
    # Inside the executor's `srun -n1` step srun sets SLURM_JOB_NODELIST; a second srun there would wait forever
    # for the GPUs that step holds (test_slurm.py runs this on a real Slurm), so one node launches in place.
    env = {"SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0"}
    (command,) = plan_launch(TRAIN + ["--recipe", "7b"], environ=env, config_dir=CONFIGS).commands
    assert command[0] == sys.executable and "srun" not in command
    assert _flag(command, "--config_file").endswith("deepspeed_zero3.yaml") and _flag(command, "--num_processes") == "8"
    assert _flag(command, "--mixed_precision") == "bf16" and "--cpu" not in command


def test_32b_spans_four_nodes_with_ranks_from_slurm():
    env = {"SLURM_JOB_NODELIST": "gpu[01-03,07]", "SLURM_JOB_ID": "4242"}
    plan = plan_launch(TRAIN + ["--recipe", "32b"], environ=env, config_dir=CONFIGS, port=default_port(env))
    (srun,) = plan.commands
    assert "--nodes=4" in srun and "--ntasks-per-node=1" in srun and "--nodelist=gpu01,gpu02,gpu03,gpu07" in srun
    inner = srun[-1]
    assert _flag(inner, "--num_machines") == "4" and _flag(inner, "--num_processes") == "32"
    assert _flag(inner, "--machine_rank") == '"$SLURM_PROCID"' and _flag(inner, "--main_process_ip") == "gpu01"
    assert _flag(inner, "--main_process_port") == str(20000 + 4242)


def test_inside_a_snakemake_job_the_node_list_comes_from_squeue(tmp_path, monkeypatch):
    fake = tmp_path / "squeue"
    fake.write_text('#!/bin/sh\n[ "$3" = 77 ] && echo "gpu[11-14]"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    env = {"SLURM_JOB_ID": "77", "VPPO_CPUS_PER_NODE": "64"}  # what the train rule's shell sees
    (srun,) = plan_launch(TRAIN + ["--recipe", "32b"], environ=env, config_dir=CONFIGS).commands
    assert "--nodelist=gpu11,gpu12,gpu13,gpu14" in srun
    assert "--cpus-per-task=64" in srun and "--gres=gpu:8" in srun
    # One node needs no fan-out: the rule already runs inside the plugin's srun step there.
    (local,) = plan_launch(TRAIN + ["--recipe", "7b"], environ=env, config_dir=CONFIGS).commands
    assert local[0] == sys.executable and _flag(local, "--num_processes") == "8"


def test_vllm_server_mode_takes_one_extra_node():
    env = {"SLURM_JOB_NODELIST": "gpu[01-05]"}
    plan = plan_launch(TRAIN + ["--recipe", "32b", "--set", "vllm_mode=server"], environ=env, config_dir=CONFIGS)
    (server,) = plan.background
    assert "--nodelist=gpu05" in server and server[4:6] == ["trl", "vllm-serve"] and _flag(server, "--model") == "/m"
    assert plan.env == {"VPPO_VLLM_SERVER_HOST": "gpu05"} and "--nodelist=gpu01,gpu02,gpu03,gpu04" in plan.commands[0]


@pytest.mark.parametrize("args, env, message", [
    (["--recipe", "32b"], {}, "needs 4 nodes: run inside a SLURM allocation"),
    (["--recipe", "32b"], {"SLURM_JOB_NODELIST": "gpu[01-02]"}, "needs 4 node.*has 2"),
    (["--recipe", "smoke", "--set", "use_vllm=true", "--set", "vllm_mode=server"], {}, "needs 2 nodes .one for the vLLM server"),
])
def test_impossible_layouts_are_refused(args, env, message):
    with pytest.raises(LaunchError, match=message):
        plan_launch(TRAIN + args, environ=env, config_dir=CONFIGS)


def _script_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_script_dry_run_prints_the_plan():
    env = {**_script_env(), "SLURM_JOB_NODELIST": "gpu[1-4]"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--", *TRAIN, "--recipe", "32b"], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith("srun --nodes=4") and str(CONFIGS / "deepspeed_zero3.yaml") in done.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--", *TRAIN, "--recipe", "nope"], env=_script_env(),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "recipe 'nope'" in bad.stderr


@pytest.mark.slow
def test_script_really_trains_one_cpu_process(tiny_model_dir, tmp_path):
    from vppo.data.train_data import prepare_train_data

    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=8)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--", "--model", str(tiny_model_dir), "--data", str(data),
                           # grpo: the random-init model answers nothing right, so a filtering method could never fill a
                           # rollout (no filler groups since dynamic sampling follows the official code)
                           "--recipe", "smoke", "--method", "grpo", "--work-dir", str(tmp_path / "work"),
                           "--out", str(out), "--max-steps", "1"],
                          env=_script_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["world_size"] == 1 and (out / "final" / "model.safetensors").is_file()


def test_cpu_zero3_plan_starts_two_deepspeed_ranks_without_accelerates_cpu_switch():
    # `--cpu` would switch DeepSpeed off (and start one process): DeepSpeed finds its CPU accelerator by itself
    (command,) = plan_launch(TRAIN + ["--recipe", "cpu_zero3"], environ={}, config_dir=CONFIGS).commands
    assert command[0] == sys.executable and "--cpu" not in command
    assert _flag(command, "--config_file").endswith("deepspeed_zero3.yaml") and _flag(command, "--num_processes") == "2"
    assert _flag(command, "--mixed_precision") == "no"
    # plain multi-process CPU: accelerate's MULTI_GPU layout in CPU mode (the `--cpu` flag would start one process)
    (ddp,) = plan_launch(TRAIN + ["--recipe", "cpu_zero3", "--set", "distributed=none"], environ={},
                         config_dir=CONFIGS).commands
    assert ddp[:2] == ["env", "ACCELERATE_USE_CPU=true"] and "--cpu" not in ddp
    assert _flag(ddp, "--config_file").endswith("multi_gpu.yaml") and _flag(ddp, "--num_processes") == "2"


def test_multi_node_rendezvous_uses_the_slurm_node_address_and_ends_with_the_first_failure(tmp_path, monkeypatch):
    # Node names need not resolve on the compute network (they do not on the local test Slurm): the main process
    # is named by the address Slurm uses, and one node's failure ends the whole step.
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show node gpu01" ] && '
                    'echo "NodeName=gpu01 Arch=x86_64 CoresPerSocket=32 NodeAddr=10.1.2.3 NodeHostName=gpu01"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    env = {"SLURM_JOB_NODELIST": "gpu01,gpu02,gpu03,gpu07", "SLURM_JOB_ID": "5"}
    (srun,) = plan_launch(TRAIN + ["--recipe", "32b"], environ=env, config_dir=CONFIGS).commands
    assert _flag(srun[-1], "--main_process_ip") == "10.1.2.3"
    assert "--kill-on-bad-exit=1" in srun[:srun.index("bash")]
