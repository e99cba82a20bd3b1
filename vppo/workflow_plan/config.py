"""The workflow's configuration: the preset chosen, typed ``--config`` values, and the checks the JSON schema
cannot make (cross references between sections, keys that moved, the recipes' layouts).

Snakemake's own ``validate`` (which also fills the schema's defaults) runs between :func:`select_preset` and
:func:`check_config`, on the schema :func:`filled_schema` returns; ``common.smk`` calls the three in order.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml

from vppo.catalog import UNTRAINED_METHODS, fill_config_schema, parse_method
from vppo.config_coercion import coerce_by_schema
from vppo.training.recipes import RECIPE_DIR, Recipe, colocated_group_problem

#: Train-job keys whose one home is the model's recipe (the launcher and the trainer read them from there).
RECIPE_LAYOUT = {"nodes": "num_nodes", "gpus_per_node": "gpus_per_node"}


@cache
def recipe(name: str) -> Recipe:
    """A training recipe's file as a :class:`Recipe`, read once per process and not validated here: validation
    imports the method registries (torch), which the driver environment that runs Snakemake lacks; `vppo train`
    validates it, and :func:`recipe_problems` checks its layout at config time."""
    path = RECIPE_DIR / f"{name}.yaml"
    try:
        return Recipe(name=name, **yaml.safe_load(path.read_text()))
    except TypeError as exc:  # a key the Recipe does not have, or one missing: `vppo train` would refuse it too
        raise ValueError(f"{path}: {exc}") from exc


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` on top, nested mappings merged key by key (as ``--config`` applies)."""
    result = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def command_line_config(overrides: dict, schema_path: Path) -> dict:
    """The --config values, each typed as the schema declares its key: Snakemake hands nested ones over as
    strings ('eval={samples: 4}' gives '4'); one line naming the key when a value is not of its type."""
    return coerce_by_schema(dict(overrides or {}), yaml.safe_load(Path(schema_path).read_text()))


def select_preset(config: dict, overrides: dict, config_dir: Path, given_configfile: bool) -> dict:
    """``--config preset=NAME`` swaps the default file for ``config_dir/NAME.yaml`` (``overrides``, the typed
    --config values, on top). With ``--configfile`` (``given_configfile``) the given file is the configuration
    and the preset key is only checked (by the schema)."""
    wanted = config.get("preset", "default")
    if given_configfile or wanted == "default":
        return merged(config, overrides)
    path = Path(config_dir) / f"{wanted}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
        raise ValueError(f"config preset {wanted!r}: no file {path} (choose from {choices})")
    return merged(yaml.safe_load(path.read_text()), overrides)


def filled_schema(schema_path: Path, config_dir: Path, recipe_dir: Path) -> dict:
    """The config schema with its enums filled from the study registry (vppo.catalog), the presets found in
    ``config_dir`` and the recipes in ``recipe_dir``."""
    return fill_config_schema(yaml.safe_load(Path(schema_path).read_text()),
                              [p.stem for p in Path(config_dir).glob("*.yaml")],
                              [p.stem for p in Path(recipe_dir).glob("*.yaml")])


def check_moved_keys(config: dict) -> None:
    """Keys that moved out of the configuration: one line saying where the value lives now (run before the
    schema, which would only say the key is unexpected)."""
    for name, spec in (config.get("models") or {}).items():
        for key, recipe_key in RECIPE_LAYOUT.items():
            if isinstance(spec, dict) and key in (spec.get("train_resources") or {}):
                raise ValueError(f"models.{name}.train_resources.{key}: no longer a config key; the training layout "
                                 f"lives in the recipe only: set {recipe_key} in vppo/training/recipes/"
                                 f"{spec.get('recipe', '<recipe>')}.yaml (or a recipe of your own)")


def check_config(config: dict) -> None:
    """What the schema cannot say, after it has passed: every problem, one line each, in one ValueError."""
    problems = cross_reference_problems(config) + recipe_problems(config)
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


def recipe_problems(config: dict) -> list[str]:
    """Each configured model's recipe places its colocated vLLM groups on whole nodes: found before a 32-GPU job
    is queued, not when it starts (the rest of the recipe is checked by `vppo train`, which needs torch)."""
    problems = []
    for name, spec in config["models"].items():
        problem = colocated_group_problem(recipe(spec["recipe"]))
        if problem:
            problems.append(f"models.{name}.recipe ({spec['recipe']}): {problem}")
    return problems


def cross_reference_problems(config: dict) -> list[str]:
    """Tables, analysis, study and released checkpoints name configured cells; method names parse."""
    problems = []
    models = config["models"]
    for name, spec in models.items():
        for method in spec["methods"]:  # tables, analysis and released name a subset of these (checked below)
            try:
                parse_method(method)
            except ValueError as exc:
                problems.append(f"models.{name}.methods: {exc}")
        for method in spec.get("released", {}):
            if method not in spec["methods"]:
                problems.append(f"models.{name}.released.{method}: not in models.{name}.methods")

    def check_cells(where, model, methods):
        if model not in models:
            problems.append(f"{where}.model: {model!r} is not a key of models")
            return
        missing = [m for m in methods if m not in models[model]["methods"]]
        if missing:
            problems.append(f"{where}.methods: {missing} not in models.{model}.methods")

    for table, spec in config.get("tables", {}).items():
        check_cells(f"tables.{table}", spec["model"], spec["methods"])
    analysis = config.get("analysis")
    if analysis:
        check_cells("analysis", analysis["model"], analysis["methods"])
    study = config.get("study")
    if study:
        if study["baseline"] not in study["methods"]:
            problems.append(f"study.baseline: {study['baseline']!r} is not one of study.methods")
        for model in study["models"]:
            check_cells(f"study ({model})", model, study["methods"])
            untrained = [m for m in study["methods"] if model in models and (
                m in UNTRAINED_METHODS or m in models[model].get("released", {}))]
            if untrained:  # the study's training curves read every seed's training log
                problems.append(f"study.methods: {untrained} not trained by {model} (compare with the warm start "
                                "through study.start)")
        start_model, start_method = study["start"].split("/", 1)
        check_cells("study.start", start_model, [start_method])
    for name, spec in models.items():
        if spec["base"] in models and models[spec["base"]]["base"] in models:
            problems.append(f"models.{name}.base: {spec['base']!r} shares another model's base in turn; name the "
                            "model that fetches it")
    return problems
