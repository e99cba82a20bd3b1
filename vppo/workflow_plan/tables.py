"""Helpers of workflow/rules/tables.smk: the inputs and options of tables, figures, report, study and check."""

from __future__ import annotations

import json
import shlex

from vppo.workflow_plan.plan import eval_json


def table_inputs(plan, wildcards) -> list[str]:
    spec = plan.config["tables"][wildcards.table]
    return [eval_json(spec["model"], method, bench) for method in spec["methods"] for bench in plan.benchmarks]


def figure_roots(plan) -> str:
    """The result roots `vppo figures` reads, only those this configuration fills (a given root must exist)."""
    roots = {"--train-root": "results/train" if plan.training_runs() else None,
             "--analysis-root": "results/analysis" if plan.analysis_targets() else None}
    return " ".join(f"{flag} {root}" for flag, root in roots.items() if root)


def paper_model_pairs(plan) -> str:
    """`--paper-model MODEL=PAPER` for every configured model a table compares with a paper model."""
    pairs = {spec["model"]: spec["paper_model"] for spec in plan.config["tables"].values()}
    return " ".join(f"--paper-model {shlex.quote(f'{model}={paper}')}" for model, paper in sorted(pairs.items()))


def gpus_per_job(plan) -> str:
    """GPUs held by each stage's jobs per model, for GPU-hours in the report (keys as `vppo report` reads them)."""
    mapping = {"*": 0}
    for model, spec in plan.models.items():
        train = plan.train_layout(model)
        mapping[f"train/{model}"] = train["nodes"] * train["gpus_per_node"]
        mapping[f"eval/{model}"] = spec.get("eval_resources", {}).get("gpus", 0)
        mapping[f"analysis/{model}"] = plan.analysis_spec().get("gpus", 0)
    return json.dumps(mapping, sort_keys=True)


def study_cells(plan) -> list[str]:
    """Every cell the study compares: each seed model's methods and the warm start it is compared with."""
    study = plan.config["study"]
    start = study["start"].split("/", 1)
    return ([eval_json(model, method, bench) for model in study["models"] for method in study["methods"]
             for bench in plan.benchmarks] + [eval_json(*start, bench) for bench in plan.benchmarks])


def study_training_runs(plan) -> list[str]:
    """The training folders of every (seed model, method) of the study: its training curves read their logs."""
    study = plan.config["study"]
    return [f"results/train/{model}/{method}" for model in study["models"] for method in study["methods"]]


def study_analysis_options(plan) -> str:
    """`vppo study`'s dependency-findings flags: the preset's analysed model and methods (none without analysis)."""
    analysis = plan.config.get("analysis")
    if not analysis:
        return ""
    return (f"--analysis-root results/analysis --analysis-model {shlex.quote(analysis['model'])} "
            f"--analysis-methods {shlex.quote(','.join(analysis['methods']))}")


def required_config(plan, key: str, wildcards) -> str:
    """A --config value the regression-check rule cannot do without."""
    if not plan.config.get(key):
        raise ValueError(f"results/check/{wildcards.name}.md needs --config {key}=... "
                         "(candidate: a checkpoint or results directory; reference: a results directory "
                         "or paper:<model>/<method>)")
    return plan.config[key]


def check_options(plan) -> str:
    """`vppo check`'s options: the seed, and the backend against the paper (which publishes none). As in the
    README's first form, a checkpoint candidate is evaluated with the reference's protocol (a results folder's
    own, the paper's against the paper), never with this config's eval settings."""
    options = f"--seed {plan.eval['seed']}"
    against_paper = str(plan.config.get("reference", "")).startswith("paper:")
    return options + (f" --backend {plan.eval['backend']}" if against_paper else "")
