"""Helpers of workflow/rules/data.smk and workflow/rules/preflight.smk: the data preparers' and `vppo doctor`'s
options."""

from __future__ import annotations

import shlex


def cli_pairs(flag: str, mapping: dict | None) -> str:
    """{'n_rows': 3} -> "--option n_rows=3" (shell-quoted values)."""
    return " ".join(f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in (mapping or {}).items())


#: Data sources whose pictures follow the model family (the mini task's cells are whole merged vision tokens):
#: they get the configured ``model_family`` as their ``family`` option, unless it is the default (whose pictures
#: they draw without it: the command lines of the committed Qwen2.5-VL study stay as they were).
FAMILY_SOURCES = {"mini"}


def _family_option(plan, stage: str) -> dict:
    from vppo.model_families import DEFAULT_FAMILY

    family = plan.config.get("model_family", DEFAULT_FAMILY.key)
    follows = plan.config["data"][stage]["source"] in FAMILY_SOURCES and family != DEFAULT_FAMILY.key
    return {"family": family} if follows else {}


def train_data_options(plan) -> str:
    options = {**_family_option(plan, "train"), **(plan.config["data"]["train"].get("options") or {})}
    return cli_pairs("--option", options)


def eval_data_options(plan) -> str:
    """`vppo prepare-data eval` options: the configured ones, and the configured benchmarks (its default, "all",
    is every supported benchmark, which a source such as VPPO-Eval need not hold)."""
    options = {"benchmarks": ",".join(plan.benchmarks), **_family_option(plan, "eval"),
               **(plan.config["data"]["eval"].get("options") or {})}
    return cli_pairs("--option", options)


#: The configuration the preflight's `vppo plan` reads (written by the preflight job itself, beside its report).
PLAN_CONFIG = "results/preflight/plan_config.yaml"


def plan_config_text(plan) -> str:
    """The workflow's effective configuration (preset, --config values and schema defaults) as `vppo plan` reads it."""
    import yaml

    return yaml.safe_dump(plan.config, sort_keys=False)


def plan_options(plan) -> str:
    """`vppo plan` options: the workflow's root and the most training runs the cluster runs together."""
    at_once = plan.cluster.get("runs_at_once")
    return f"--config {PLAN_CONFIG} --root .{f' --runs-at-once {at_once}' if at_once else ''}"


def preflight_options(plan) -> str:
    """`vppo doctor` options: a GPU and vLLM when any job needs them, and the configured free disk under work/."""
    gpus = 1 if plan.any_gpu_job() else 0
    vllm = plan.eval["backend"] == "vllm" or any(plan.recipe_of(model).use_vllm for model in plan.models)
    return f"--gpus {gpus}{' --vllm' if vllm else ''} --min-free-gb {plan.cluster['min_free_gb']} --path work"
