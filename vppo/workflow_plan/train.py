"""Helpers of workflow/rules/train.smk: how a training job is launched, its options, environment and clean-up."""

from __future__ import annotations

import shlex

from vppo.training.recipes import RECIPE_DIR
from vppo.workflow_plan.config import recipe
from vppo.workflow_plan.data import cli_pairs
from vppo.workflow_plan.plan import file_digest
from vppo.workflow_plan.resources import threads_per_process


def launch_command(plan, wildcards) -> str:
    """`vppo train` directly (CPU) or through the accelerate launcher, which reads the layout from the recipe."""
    if plan.models[wildcards.model].get("launcher", "direct") == "direct":
        return "workflow/scripts/vppo train"
    cpus = plan.train_spec(wildcards).get("cpus", 1)
    return f"VPPO_CPUS_PER_NODE={cpus} bash workflow/scripts/launch_train.sh --"


def recipe_digest(plan, wildcards) -> str:
    """Editing a recipe file reruns the cells trained with it (imported code is no rerun trigger)."""
    return file_digest(RECIPE_DIR / f"{plan.models[wildcards.model]['recipe']}.yaml")


def train_options(plan) -> str:
    train = plan.config["train"]
    options = [f"--max-steps {train['max_steps']}" if train.get("max_steps") else "", cli_pairs("--set", train.get("set"))]
    if train.get("report_to"):  # unset: the recipe's (tensorboard)
        options.append(cli_pairs("--set", {"report_to": train["report_to"]}))
    return " ".join(o for o in options if o)


def model_seed(plan, wildcards) -> int:
    return plan.models[wildcards.model].get("seed", plan.config["train"]["seed"])


def is_multi_node(plan, wildcards) -> bool:
    return plan.train_spec(wildcards).get("nodes", 1) > 1


def environment(plan, wildcards, socket_ifname: str | None = None) -> str:
    """The variables the launcher and every rank inherit, as a shell prefix: OMP_NUM_THREADS per rank (the
    node's CPUs shared by its ranks and colocated vLLM engines), and GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME when
    the SLURM profile names the nodes' network interface (the ``socket_ifname`` resource: vLLM's external
    launcher builds gloo groups over all ranks and can hang on a node with several interfaces)."""
    loaded = recipe(plan.models[wildcards.model]["recipe"])
    threads = threads_per_process(plan.train_spec(wildcards).get("cpus", 1), loaded)
    variables = {"OMP_NUM_THREADS": threads}
    if socket_ifname:
        variables.update(GLOO_SOCKET_IFNAME=socket_ifname, NCCL_SOCKET_IFNAME=socket_ifname)
    return " ".join(f"{name}={shlex.quote(str(value))}" for name, value in variables.items())


def prune_command(plan, wildcards) -> str:
    """After a run is published: keep only the last checkpoint in work/ (``train.prune_work``)."""
    if not plan.config["train"]["prune_work"]:
        return "true"
    return f"workflow/scripts/vppo prune-work work/train/{wildcards.model}/{wildcards.method}"
