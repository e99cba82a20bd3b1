"""Helpers of workflow/rules/data.smk and workflow/rules/preflight.smk: the data preparers' and `vppo doctor`'s
options."""

from __future__ import annotations

import shlex


def cli_pairs(flag: str, mapping: dict | None) -> str:
    """{'n_rows': 3} -> "--option n_rows=3" (shell-quoted values)."""
    return " ".join(f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in (mapping or {}).items())


def train_data_options(plan) -> str:
    return cli_pairs("--option", plan.config["data"]["train"].get("options"))


def eval_data_options(plan) -> str:
    """`vppo prepare-data eval` options: the configured ones, and the configured benchmarks (its default, "all",
    is every supported benchmark, which a source such as VPPO-Eval need not hold)."""
    options = {"benchmarks": ",".join(plan.benchmarks), **(plan.config["data"]["eval"].get("options") or {})}
    return cli_pairs("--option", options)


def preflight_options(plan) -> str:
    """`vppo doctor` options: a GPU and vLLM when any job needs them, and the configured free disk under work/."""
    gpus = 1 if plan.any_gpu_job() else 0
    vllm = plan.eval["backend"] == "vllm" or any(plan.recipe_of(model).use_vllm for model in plan.models)
    return f"--gpus {gpus}{' --vllm' if vllm else ''} --min-free-gb {plan.cluster['min_free_gb']} --path work"
