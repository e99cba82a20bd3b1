"""Helpers of workflow/rules/eval.smk: the options of `vppo eval`, `vppo analyze` and `vppo gradient-variance`.

A new `vppo eval` flag the workflow sets is one line of :func:`eval_options` (and the flag in
vppo/evaluation/cli.py): docs/design.md, "Change traces"."""

from __future__ import annotations

import shlex


def sampling_options(plan) -> str:
    """The evaluation protocol's options, shared by `vppo eval` and `vppo check`."""
    spec = plan.eval
    options = (f"--backend {spec['backend']} --samples {spec['samples']} --max-new-tokens {spec['max_new_tokens']} "
               f"--seed {spec['seed']}")
    return options + (f" --limit {spec['limit']}" if spec.get("limit") else "")


def eval_options(plan, wildcards) -> str:
    options = f"{sampling_options(plan)} --model-label {wildcards.model} --method-label {wildcards.method}"
    gpus = plan.eval_spec(wildcards).get("gpus", 0)
    if plan.eval["backend"] == "vllm" and gpus:
        options += f" --tensor-parallel-size {gpus}"
    return options


def finished_files(plan, wildcards) -> list[str]:
    """What a grouped evaluation job copies out of work/eval: every configured benchmark's result and samples."""
    return [f"work/eval/{wildcards.model}/{wildcards.method}/{benchmark}{ext}"
            for benchmark in plan.benchmarks for ext in (".json", ".samples.jsonl")]


def analysis_options(plan, wildcards) -> str:
    analysis = plan.config["analysis"]
    return (f"--benchmarks {','.join(plan.benchmarks)} --n-prompts {analysis['n_prompts']} "
            f"--samples {analysis['samples']} --max-new-tokens {analysis['max_new_tokens']} --seed {analysis['seed']} "
            f"--model-label {wildcards.model} --method-label {wildcards.method}")


def gradient_variance_options(plan, wildcards) -> str:
    analysis = plan.config["analysis"]
    spec = analysis["gradient_variance"]
    return (f"--recipe {shlex.quote(plan.models[wildcards.model]['recipe'])} --replicates {spec['replicates']} "
            f"--prompts {spec['prompts']} --samples {spec['samples']} "
            + (f"--methods {shlex.quote(','.join(spec['methods']))} " if spec.get("methods") else "")
            + f"--max-new-tokens {analysis['max_new_tokens']} --seed {analysis['seed']}")


def variant_options(plan, wildcards) -> str:
    return f"{analysis_options(plan, wildcards)} --variants {','.join(plan.config['analysis']['variants'])}"
