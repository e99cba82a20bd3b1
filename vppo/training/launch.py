"""Command plans for ``vppo train`` on one process, one node, or several nodes inside one SLURM allocation.

``workflow/scripts/launch_train.sh [--dry-run] [--port N] -- <vppo train args>`` runs this module. It reads the
recipe (same ``--recipe``/``--set`` as ``vppo train``) for its layout (num_nodes, gpus_per_node, distributed,
use_vllm/vllm_mode) and builds:

- one node, with or without SLURM: ``accelerate launch --config_file <layout>.yaml ... -m vppo train <args>``
  in place (the CPU smoke form: ``--cpu``, one process); inside a Snakemake job this is the executor's own
  ``srun`` step, which holds the node's GPUs: no second step is started;
- several nodes of a SLURM allocation: one ``srun`` step starting one ``accelerate launch`` per training node,
  machine rank from ``SLURM_PROCID``, main process = the first node of the allocation;
- ``vllm_mode: server``: the allocation holds one extra node that runs ``trl vllm-serve`` (tensor parallel over
  its GPUs); the trainers reach it through ``VPPO_VLLM_SERVER_HOST``.

``--dry-run`` prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vppo.errors import EXIT_BAD_INPUT, InputError
from vppo.training.recipes import Recipe, load_recipe, parse_overrides

CONFIG_FILES = {"deepspeed_zero3": "deepspeed_zero3.yaml", "fsdp": "fsdp.yaml", "ddp": "multi_gpu.yaml",
                "single": "single.yaml"}
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "workflow" / "envs" / "accelerate"
_RANGE = re.compile(r"^(?P<prefix>[^\[,]+)\[(?P<body>[^\]]+)\](?P<suffix>[^,]*)")


class LaunchError(InputError, RuntimeError):
    """The allocation or recipe cannot be launched as asked; the message says why."""


@dataclass
class Plan:
    """What to run: ``background`` commands first (not waited for), then ``commands`` in order."""

    commands: list[list[str]]
    background: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        lines = [f"{shlex.join(cmd)} &" for cmd in self.background]
        lines += [(env + " " if env else "") + shlex.join(cmd) for cmd in self.commands]
        return "\n".join(lines)


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM node list (``gpu[01-03,07],login5``); ``scontrol`` when it answers, else parsed here
    (scontrol exits 1 where Slurm is installed but no slurm.conf is reachable)."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()
    hosts, rest = [], nodelist.strip()
    while rest:
        match = _RANGE.match(rest)
        if match:
            for part in match.group("body").split(","):
                low, _, high = part.partition("-")
                for number in range(int(low), int(high or low) + 1):
                    hosts.append(f"{match.group('prefix')}{str(number).zfill(len(low))}{match.group('suffix')}")
            rest = rest[match.end():].lstrip(",")
        else:
            head, _, rest = rest.partition(",")
            hosts.append(head)
    return hosts


def squeue_nodelist(environ: dict[str, str]) -> str | None:
    """The job's node list from ``squeue`` (inside a Snakemake job, whose jobstep strips SLURM_JOB_NODELIST)."""
    job = environ.get("SLURM_JOB_ID", "")
    if not job or not shutil.which("squeue"):
        return None
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True)
    return out.stdout.strip() or None


def node_address(host: str) -> str:
    """The address other nodes reach ``host`` at: Slurm's ``NodeAddr`` (``scontrol show node``), else the name.

    Node names need not resolve on the compute network (they do not on the local test cluster): a rendezvous on
    an unresolvable name retries until it hangs, so the main process is named by the address Slurm itself uses.
    """
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True)
        match = re.search(r"\bNodeAddr=(\S+)", out.stdout) if out.returncode == 0 else None
        if match:
            return match.group(1)
    return host


def accelerate_layout(recipe: Recipe) -> str:
    if recipe.distributed != "none":
        return recipe.distributed
    return "ddp" if recipe.world_size > 1 else "single"


def accelerate_command(recipe: Recipe, config_dir: Path, train_args: list[str], num_machines: int, rank: str,
                       main_ip: str | None, port: int) -> list[str]:
    layout = accelerate_layout(recipe)
    config = Path(config_dir) / CONFIG_FILES[layout]
    # `python -m accelerate.commands.launch` rather than the `accelerate` CLI: the CLI imports its `estimate`
    # command, which imports timm, which needs torchvision (absent on the CPU machines).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_machines", str(num_machines),
           "--num_processes", str(num_machines * recipe.ranks_per_node),
           "--mixed_precision", "bf16" if recipe.bf16 else "no"]
    if recipe.gpus_per_node == 0 and layout == "single":
        cmd.append("--cpu")
    elif recipe.gpus_per_node == 0 and layout == "ddp":
        # `--cpu` starts one process whatever --num_processes says; multi-process CPU is MULTI_GPU + use_cpu
        cmd = ["env", "ACCELERATE_USE_CPU=true", *cmd]
    # (DeepSpeed on CPU: no flag; DeepSpeed picks its CPU accelerator, and `--cpu` would switch DeepSpeed off)
    if num_machines > 1:
        cmd += ["--machine_rank", rank, "--main_process_ip", str(main_ip), "--main_process_port", str(port),
                "--rdzv_backend", "static", "--same_network"]
    else:
        cmd += ["--main_process_port", str(port)]
    return cmd + ["-m", "vppo", "train", *train_args]


def parse_train_args(train_args: list[str]) -> argparse.Namespace:
    from vppo.training.cli import configure

    parser = argparse.ArgumentParser(prog="launch_train.sh -- ", add_help=False)
    configure(parser)
    return parser.parse_args(train_args)


def plan_launch(train_args: list[str], environ: dict[str, str] | None = None, config_dir: Path = DEFAULT_CONFIG_DIR,
                port: int = 29500) -> Plan:
    """The commands that run ``vppo train <train_args>`` on the allocation described by ``environ``."""
    environ = dict(os.environ if environ is None else environ)
    parsed = parse_train_args(train_args)
    recipe = load_recipe(parsed.recipe, parse_overrides(parsed.overrides), parsed.max_steps)
    server = recipe.use_vllm and recipe.vllm_mode == "server"
    nodes_needed = recipe.num_nodes + (1 if server else 0)
    if nodes_needed == 1:
        # One node runs in place, never through another srun: a Snakemake job without `mpi` already runs inside
        # the executor's `srun -n1` step, which holds the job's CPUs and GPUs, and a second step asking for them
        # would wait for that step to end, i.e. forever (steps do not share resources without --overlap).
        return Plan([accelerate_command(recipe, config_dir, train_args, 1, "0", None, port)])
    # Several nodes fan out with one srun step; the rule runs in the batch script (the `mpi` resource), not in a
    # step. Snakemake's jobstep strips SLURM_JOB_NODELIST, hence squeue.
    nodelist = environ.get("SLURM_JOB_NODELIST") or squeue_nodelist(environ)
    if not nodelist:  # (vllm_mode server always needs a node of its own)
        raise LaunchError(f"recipe {recipe.name} needs {nodes_needed} nodes{' (one for the vLLM server)' if server else ''}:"
                          f" run inside a SLURM allocation (SLURM_JOB_NODELIST is not set)")

    hosts = expand_nodelist(nodelist)
    if len(hosts) != nodes_needed:
        raise LaunchError(f"recipe {recipe.name} needs {nodes_needed} node(s) ({recipe.num_nodes} training"
                          f"{' + 1 vLLM server' if server else ''}) but the allocation has {len(hosts)}: {hosts}")
    trainers = hosts[:recipe.num_nodes]
    plan = Plan(commands=[])
    if server:
        # The port the trainers connect to (vppo.training.runner reads the same variable).
        server_port = environ.get("VPPO_VLLM_SERVER_PORT", "8000")
        plan.background.append([
            "srun", "--nodes=1", "--ntasks=1", f"--nodelist={hosts[-1]}", "trl", "vllm-serve", "--model",
            str(parsed.model), "--tensor-parallel-size", str(max(recipe.gpus_per_node, 1)),
            "--max-model-len", str(recipe.max_model_length), "--port", server_port])
        plan.env["VPPO_VLLM_SERVER_HOST"] = hosts[-1]
    launch = accelerate_command(recipe, config_dir, train_args, len(trainers), "$SLURM_PROCID",
                                node_address(trainers[0]), port)
    # A step gets one CPU per task unless told otherwise (and Snakemake's jobstep strips SLURM_CPUS_PER_TASK):
    # the rule passes the node's CPUs as VPPO_CPUS_PER_NODE. GPUs are named explicitly for the same reason.
    # --kill-on-bad-exit: when one node's launcher dies, the others are ended at once instead of waiting in a
    # collective until the process group's timeout (30 min) with the whole allocation idle.
    step = ["srun", f"--nodes={len(trainers)}", "--ntasks-per-node=1", f"--nodelist={','.join(trainers)}",
            "--kill-on-bad-exit=1"]
    if environ.get("VPPO_CPUS_PER_NODE"):
        step.append(f"--cpus-per-task={int(environ['VPPO_CPUS_PER_NODE'])}")
    if recipe.gpus_per_node:
        step.append(f"--gres=gpu:{recipe.gpus_per_node}")
    # The machine rank is only known inside each srun task, hence the shell around accelerate.
    plan.commands.append([*step, "bash", "-c", shlex.join(launch).replace("'$SLURM_PROCID'", '"$SLURM_PROCID"')])
    return plan


def execute(plan: Plan, extra_env: dict[str, str] | None = None) -> int:
    env = {**os.environ, **plan.env, **(extra_env or {})}
    servers = [subprocess.Popen(cmd, env=env) for cmd in plan.background]
    try:
        for cmd in plan.commands:
            code = subprocess.run(cmd, env=env).returncode
            if code:
                return code
        return 0
    finally:
        for proc in servers:
            proc.terminate()


def default_port(environ: dict[str, str]) -> int:
    """Distinct per SLURM job, so two jobs sharing a node do not collide on the rendezvous port."""
    if environ.get("MAIN_PROCESS_PORT"):
        return int(environ["MAIN_PROCESS_PORT"])
    job = environ.get("SLURM_JOB_ID", "")
    return 20000 + int(job) % 20000 if job.isdigit() else 29500


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: launch_train.sh [--dry-run] [--port N] [--config-dir DIR] -- <vppo train arguments>",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch_train.sh")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--port", type=int, default=default_port(os.environ),
                        help="rendezvous port (default: MAIN_PROCESS_PORT, else derived from SLURM_JOB_ID, else 29500)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="accelerate config files")
    options = parser.parse_args(argv[:split])
    try:
        plan = plan_launch(argv[split + 1:], config_dir=options.config_dir, port=options.port)
    except InputError as exc:  # this entry point's own cli.main: the one-line report, exit 2
        print(f"launch_train.sh: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if options.dry_run:
        print(plan.render())
        return 0
    print(plan.render(), file=sys.stderr, flush=True)  # the job's log shows what ran, rendezvous address included
    return run_holding_work_dir(plan, parse_train_args(argv[split + 1:]))


def run_holding_work_dir(plan: Plan, train: argparse.Namespace) -> int:
    """Run ``plan`` holding the work folder's lock for every rank, unless this inputs' last attempt failed in a way
    a retry repeats; the exit status is the attempt's outcome as vppo.training.exits classifies it (torchrun turns
    every failed rank into 1: the ranks record what happened in the work folder)."""
    from vppo.training import exits, work_lock

    try:
        token = work_lock.acquire(train.work_dir)
    except work_lock.WorkDirBusy as exc:
        print(f"launch_train.sh: {exc}", file=sys.stderr)
        return 2
    try:
        known = exits.refuse_known_failure(train, exits.fingerprint(train), "launch_train.sh")
        if known is not None:
            return known
        exits.clear(train.work_dir)
        code = execute(plan, {work_lock.TOKEN_ENV: token})
        outcome = exits.read(train.work_dir)
        if code and outcome:
            print(f"launch_train.sh: {outcome['message']}", file=sys.stderr)
            return int(outcome["exit_status"])
        return code
    finally:
        work_lock.release(train.work_dir, token)


if __name__ == "__main__":
    sys.exit(main())
