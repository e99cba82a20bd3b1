# Configuration (preset selection + JSON-schema validation), wildcard constraints, input functions and
# per-rule resources shared by every stage.
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import update_config, validate

sys.path.insert(0, workflow.basedir)  # the checkout's vppo (torch-free modules only: the driver env has no torch)
from vppo.catalog import BASE_METHOD, UNTRAINED_METHODS, fill_config_schema, parse_method
from vppo.config_coercion import coerce_by_schema

CONFIG_DIR = Path(workflow.basedir) / "workflow" / "config"
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
RECIPE_DIR = Path(workflow.basedir) / "vppo" / "training" / "recipes"
# Rules name their software environment: the driver (Snakemake, pandas, matplotlib) for CPU stages and the
# cluster's pinned GPU environment (the root environment.yml, one copy) for data, training, evaluation and
# analysis. Paths are relative to this rules folder.
DRIVER_ENV = "../envs/driver.yml"
GPU_ENV = "../../environment.yml"
# Every rule runs `workflow/scripts/vppo COMMAND ...` (python -m vppo with this checkout importable).
# Outside conda that is the interpreter running Snakemake (the venv the README installs into); inside the
# rule's conda env it is that env's python3.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ.setdefault("VPPO_PYTHON", sys.executable)


def recipe_file(name):
    return RECIPE_DIR / f"{name}.yaml"


def recipe_of(model):
    """The recipe file's keys for a configured model (the layout; vppo.training.recipes validates the rest)."""
    return yaml.safe_load(recipe_file(MODELS[model]["recipe"]).read_text())


def file_digest(path):
    """Short sha256 of a file's bytes, for params that must rerun a job when the file changes."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def command_line_config():
    """The --config values, each typed as the schema declares its key: Snakemake hands nested ones over as
    strings ('eval={samples: 4}' gives '4'); one line naming the key when a value is not of its type."""
    return coerce_by_schema(dict(workflow.config_settings.overwrite_config or {}), yaml.safe_load(SCHEMA.read_text()))


def select_preset(config):
    """``--config preset=NAME`` swaps the default file for workflow/config/NAME.yaml (CLI --config on top).

    With ``--configfile`` the given file is the configuration and the preset key is only checked."""
    wanted = config.get("preset", "default")
    overrides = command_line_config()
    if workflow.overwrite_configfiles or wanted == "default":
        update_config(config, overrides)
        return config
    path = CONFIG_DIR / f"{wanted}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"config preset {wanted!r}: no file {path} (choose from {choices})")
    chosen = yaml.safe_load(path.read_text())
    update_config(chosen, overrides)
    return chosen


#: Train-job keys whose one home is the model's recipe (the launcher and the trainer read them from there).
RECIPE_LAYOUT = {"nodes": "num_nodes", "gpus_per_node": "gpus_per_node"}


def check_moved_keys(config):
    """Keys that moved out of the configuration: one line saying where the value lives now."""
    for name, spec in (config.get("models") or {}).items():
        for key, recipe_key in RECIPE_LAYOUT.items():
            if isinstance(spec, dict) and key in (spec.get("train_resources") or {}):
                raise ValueError(f"models.{name}.train_resources.{key}: no longer a config key; the training layout "
                                 f"lives in the recipe only: set {recipe_key} in vppo/training/recipes/"
                                 f"{spec.get('recipe', '<recipe>')}.yaml (or a recipe of your own)")


def validate_against_registry(config):
    """JSON-schema validation with the schema's enums filled from the study registry (vppo.catalog), the
    presets found in workflow/config/ and the recipes in vppo/training/recipes/ (Snakemake's validate takes a
    file, so the filled schema is written to a temporary one)."""
    schema = fill_config_schema(yaml.safe_load(SCHEMA.read_text()), [p.stem for p in CONFIG_DIR.glob("*.yaml")],
                                [p.stem for p in RECIPE_DIR.glob("*.yaml")])
    with tempfile.TemporaryDirectory() as folder:
        filled = Path(folder) / SCHEMA.name
        filled.write_text(yaml.safe_dump(schema, sort_keys=False))
        validate(config, str(filled))


def check_cross_references(config):
    """What the schema cannot say: tables, analysis and released checkpoints name configured cells."""
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
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


_selected = select_preset(config)
if _selected is not config:
    config.clear()
    config.update(_selected)
check_moved_keys(config)
validate_against_registry(config)
check_cross_references(config)

MODELS = config["models"]
BENCHMARKS = config["benchmarks"]
# Each preset prepares its data into its own folder: switching presets reuses what each already built (one
# shared folder made every switch re-prepare the data and rerun everything downstream).
PRESET = config["preset"]
TRAIN_DATA, EVAL_DATA = f"resources/data/{PRESET}/train", f"resources/data/{PRESET}/eval"
ALL_METHODS = sorted({m for spec in MODELS.values() for m in spec["methods"]})


def _alternatives(keys):
    return "|".join(re.escape(k) for k in keys)


wildcard_constraints:
    model=_alternatives(MODELS),
    method=_alternatives(ALL_METHODS),
    benchmark=_alternatives(BENCHMARKS),
    table=_alternatives(config["tables"]),
    name=r"[A-Za-z0-9._-]+",


# ---------------------------------------------------------------------------------------------- cells
def eval_cells():
    """(model, method, benchmark) of every configured table cell."""
    return [(model, method, bench) for model, spec in MODELS.items()
            for method in spec["methods"] for bench in BENCHMARKS]


def eval_json(model, method, benchmark):
    return f"results/eval/{model}/{method}/{benchmark}.json"


def trained_methods(model):
    """Methods of a model that the workflow trains (not base, not a released checkpoint)."""
    spec = MODELS[model]
    return [m for m in spec["methods"] if m not in UNTRAINED_METHODS and m not in spec.get("released", {})]


def base_model_dir(wildcards):
    """A model's base checkpoint; ``base: <another model key>`` shares that model's (a seed study's seeds start
    from one checkpoint, fetched or built once)."""
    base = MODELS[wildcards.model]["base"]
    return f"resources/models/{base if base in MODELS else wildcards.model}/base"


def checkpoint_dir(wildcards):
    """The checkpoint a cell evaluates: the base model, a released checkpoint, or our converted training."""
    if wildcards.method == BASE_METHOD:
        return base_model_dir(wildcards)
    if wildcards.method in MODELS[wildcards.model].get("released", {}):
        return f"resources/models/{wildcards.model}/released_{wildcards.method}"
    return f"results/checkpoints/{wildcards.model}/{wildcards.method}"


def training_runs():
    """Output folders of every training job (training_log.jsonl inside each)."""
    return [f"results/train/{model}/{method}" for model in MODELS for method in trained_methods(model)]


def analysis_targets():
    analysis = config.get("analysis")
    if not analysis:
        return []
    return [f"results/analysis/{analysis['model']}/{method}.json" for method in analysis["methods"]]


def gradient_variance_targets():
    """The measured gradient variance of the analysis model's base checkpoint, where the config asks for it."""
    analysis = config.get("analysis") or {}
    if not analysis.get("gradient_variance"):
        return []
    return [f"results/analysis/{analysis['model']}/gradient_variance.json"]


def variant_targets():
    """One dependency-pass comparison per analysed method, when `analysis.variants` names passes."""
    analysis = config.get("analysis") or {}
    if not analysis.get("variants"):
        return []
    return [f"results/analysis/{analysis['model']}/{method}.variants.json" for method in analysis["methods"]]


def figure_roots():
    """The result roots `vppo figures` reads, only those this configuration fills (a given root must exist)."""
    roots = {"--train-root": "results/train" if training_runs() else None,
             "--analysis-root": "results/analysis" if analysis_targets() else None}
    return " ".join(f"{flag} {root}" for flag, root in roots.items() if root)


def table_files():
    return [f"results/tables/{name}.{ext}" for name in config.get("tables", {}) for ext in ("md", "csv", "tex")]


def study_targets():
    return ["results/study/study.md"] if config.get("study") else []


def study_training_runs():
    """The training folders of every (seed model, method) of the study: its training curves read their logs."""
    study = config["study"]
    return [f"results/train/{model}/{method}" for model in study["models"] for method in study["methods"]]


def study_analysis_options():
    """`vppo study`'s dependency-findings flags: the preset's analysed model and methods (none without analysis)."""
    analysis = config.get("analysis")
    if not analysis:
        return ""
    return (f"--analysis-root results/analysis --analysis-model {shlex.quote(analysis['model'])} "
            f"--analysis-methods {shlex.quote(','.join(analysis['methods']))}")


def model_seed(wildcards):
    return MODELS[wildcards.model].get("seed", config["train"]["seed"])


def all_targets():
    """Tables, figures and report, and every cell and analysis they show: Snakemake does not rebuild a
    deleted intermediate file whose consumers are up to date, so the cells are targets themselves (a deleted
    cell is rebuilt, then everything that shows it)."""
    cells = [eval_json(*cell) for cell in eval_cells()]
    return (table_files() + ["results/figures", "results/report.html"] + cells + analysis_targets() + variant_targets()
            + gradient_variance_targets() + study_targets())


# ------------------------------------------------------------------------------------------ resources
def _env_partition(kind):
    """SLURM partition from VPPO_SLURM_{GPU,CPU}_PARTITION, else VPPO_SLURM_PARTITION, else the cluster's default."""
    value = os.environ.get(f"VPPO_SLURM_{kind}_PARTITION") or os.environ.get("VPPO_SLURM_PARTITION")
    return {"slurm_partition": value} if value else {}


def _env_account():
    value = os.environ.get("VPPO_SLURM_ACCOUNT")
    return {"slurm_account": value} if value else {}


def slurm_placement(kind):
    """Account and partition resources for a CPU or GPU rule (empty when the environment does not set them)."""
    return {**_env_account(), **_env_partition(kind)}


def train_layout(model):
    """{nodes, gpus_per_node} of a model's training job: its recipe's num_nodes and gpus_per_node."""
    recipe = recipe_of(model)
    return {key: recipe[recipe_key] for key, recipe_key in RECIPE_LAYOUT.items()}


def train_spec(wildcards):
    """The training job's resources: the config's train_resources (cpus, mem_mb, runtime) and the recipe's layout."""
    return {**MODELS[wildcards.model].get("train_resources", {}), **train_layout(wildcards.model)}


def eval_spec(wildcards):
    return MODELS[wildcards.model].get("eval_resources", {})


def analysis_spec(wildcards=None):
    return config.get("analysis", {}).get("resources") or CPU


def check_spec(wildcards=None):
    return config.get("check_resources") or CPU


def cpu_spec(wildcards=None):
    return CPU


def convert_spec(wildcards):
    """Gathering sharded weights needs host memory of a few times the model size: sized per model."""
    return MODELS[wildcards.model].get("convert_resources", CPU)


def gres(gpus):
    """Per-node GPU request, or None (the resource is then absent) for CPU jobs."""
    return f"gpu:{gpus}" if gpus else None


CLUSTER = config["cluster"]


def grown_runtime(spec):
    """Runtime from ``spec(wildcards)``; retries of preempted or timed-out jobs get more time (up to 3x), never
    past the partition's limit (``cluster.max_runtime``): sbatch refuses a longer -t, and training resumes from
    work/, so a retry needs no longer slot than the first attempt."""
    limit = CLUSTER["max_runtime"]
    return lambda wildcards, attempt: min(spec(wildcards).get("runtime", 60) * min(attempt, 3), limit)


# Host memory (per node) by stage, from the model's parameter count where a spec gives no mem_mb:
# (bytes per parameter, per process, GB fixed per node). Training: each rank may hold a whole bf16 copy while
# loading (ZeRO-3 partitions only after); evaluation: vLLM stages the bf16 weights in host memory; conversion:
# the gathered float32 state dict plus the float32 model it is loaded into.
HOST_MEMORY = {"train": (2, "per_rank", 64), "eval": (2, "once", 32), "convert": (8, "once", 16)}


def host_memory_mb(stage, params_b, ranks_per_node=1):
    """MB of host memory a ``stage`` job needs for a model of ``params_b`` billion parameters."""
    bytes_per_param, scope, fixed_gb = HOST_MEMORY[stage]
    copies = ranks_per_node if scope == "per_rank" else 1
    return int((copies * bytes_per_param * params_b + fixed_gb) * 1000)


def memory_mb(stage, spec):
    """mem_mb from ``spec(wildcards)`` when set, else sized from ``models.<model>.params_b``, else 4000."""
    def resolve(wildcards):
        given = spec(wildcards).get("mem_mb")
        params_b = MODELS.get(getattr(wildcards, "model", None), {}).get("params_b") if stage else None
        if given or not params_b:
            return given or 4000
        return host_memory_mb(stage, params_b, max(spec(wildcards).get("gpus_per_node", 1), 1))
    return resolve


CPU = config.get("cpu_resources", {})
# Findings of `vppo doctor` (workflow/rules/preflight.smk), an ancient() input of every GPU job: it runs first.
PREFLIGHT = "results/preflight/doctor.txt"


def any_gpu_job():
    specs = [spec.get("eval_resources", {}) for spec in MODELS.values()] + [train_layout(m) for m in MODELS]
    specs += [analysis_spec(), check_spec()]
    return any(spec.get("gpus_per_node", 0) or spec.get("gpus", 0) for spec in specs)


def preflight_options():
    """`vppo doctor` options: a GPU and vLLM when any job needs them, and the configured free disk under work/."""
    gpus = 1 if any_gpu_job() else 0
    vllm = EVAL["backend"] == "vllm" or any(recipe_of(model).get("use_vllm") for model in MODELS)
    return f"--gpus {gpus}{' --vllm' if vllm else ''} --min-free-gb {CLUSTER['min_free_gb']} --path work"


def eval_data_options():
    """`vppo prepare-data eval` options: the configured ones, and the configured benchmarks (its default, "all",
    is every supported benchmark, which a source such as VPPO-Eval need not hold)."""
    options = {"benchmarks": ",".join(BENCHMARKS), **(config["data"]["eval"].get("options") or {})}
    return cli_pairs("--option", options)


def cli_pairs(flag, mapping):
    """{'n_rows': 3} -> "--option n_rows=3" (shell-quoted values)."""
    import shlex

    return " ".join(f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in (mapping or {}).items())


# --------------------------------------------------------------------------------------------- train
def train_launch_command(wildcards):
    """`vppo train` directly (CPU) or through the accelerate launcher, which reads the layout from the recipe."""
    if MODELS[wildcards.model].get("launcher", "direct") == "direct":
        return "workflow/scripts/vppo train"
    cpus = train_spec(wildcards).get("cpus", 1)
    return f"VPPO_CPUS_PER_NODE={cpus} bash workflow/scripts/launch_train.sh --"


def train_options():
    options = []
    if config["train"].get("max_steps"):
        options.append(f"--max-steps {config['train']['max_steps']}")
    options.append(cli_pairs("--set", config["train"].get("set")))
    if config["train"].get("report_to"):  # unset: the recipe's (tensorboard)
        options.append(cli_pairs("--set", {"report_to": config["train"]["report_to"]}))
    return " ".join(o for o in options if o)


def is_multi_node(wildcards):
    return train_spec(wildcards).get("nodes", 1) > 1


def prune_command(wildcards):
    """After a run is published: keep only the last checkpoint in work/ (``train.prune_work``)."""
    if not config["train"]["prune_work"]:
        return "true"
    return f"workflow/scripts/vppo prune-work work/train/{wildcards.model}/{wildcards.method}"


# ---------------------------------------------------------------------------------------------- eval
EVAL = config["eval"]


def sampling_options(wildcards=None):
    """The evaluation protocol's options, shared by `vppo eval` and `vppo check`."""
    options = (f"--backend {EVAL['backend']} --samples {EVAL['samples']} --max-new-tokens {EVAL['max_new_tokens']} "
               f"--seed {EVAL['seed']}")
    return options + (f" --limit {EVAL['limit']}" if EVAL.get("limit") else "")


def check_options(wildcards=None):
    """`vppo check`'s options: the seed, and the backend against the paper (which publishes none). As in the
    README's first form, a checkpoint candidate is evaluated with the reference's protocol (a results folder's
    own, the paper's against the paper), never with this config's eval settings."""
    options = f"--seed {EVAL['seed']}"
    return options + (f" --backend {EVAL['backend']}" if str(config.get("reference", "")).startswith("paper:") else "")


def eval_options(wildcards):
    options = f"{sampling_options()} --model-label {wildcards.model} --method-label {wildcards.method}"
    gpus = eval_spec(wildcards).get("gpus", 0)
    if EVAL["backend"] == "vllm" and gpus:
        options += f" --tensor-parallel-size {gpus}"
    return options


def job_resources(spec, partition="GPU", stage=None):
    """SLURM resources of a one-node job sized by ``spec(wildcards)`` (gpus, cpus, mem_mb, runtime); ``stage``
    (eval, convert) sizes memory from the model when the spec has no mem_mb. ``nodes=1``: without it Slurm may
    spread ``--gpus=4`` over two nodes."""
    return dict(
        **slurm_placement(partition),
        nodes=1,
        gpu=lambda wildcards: spec(wildcards).get("gpus", 0) or None,
        cpus_per_task=lambda wildcards: spec(wildcards).get("cpus", 1),
        mem_mb=memory_mb(stage, spec),
        runtime=grown_runtime(spec),
    )


# Every compute rule's shell starts with OMP_NUM_THREADS={resources.cpus_per_task}: libraries use the job's CPUs
# (a cluster job's `threads` is capped by the submitting host's --cores; the resource is not), not every core
# of a shared node.

def analysis_options(wildcards):
    analysis = config["analysis"]
    return (f"--benchmarks {','.join(BENCHMARKS)} --n-prompts {analysis['n_prompts']} --samples {analysis['samples']} "
            f"--max-new-tokens {analysis['max_new_tokens']} --seed {analysis['seed']} "
            f"--model-label {wildcards.model} --method-label {wildcards.method}")


def gradient_variance_options(wildcards):
    analysis = config["analysis"]
    spec = analysis["gradient_variance"]
    return (f"--recipe {shlex.quote(MODELS[wildcards.model]['recipe'])} --replicates {spec['replicates']} "
            f"--prompts {spec['prompts']} --samples {spec['samples']} "
            + (f"--methods {shlex.quote(','.join(spec['methods']))} " if spec.get("methods") else "")
            + f"--max-new-tokens {analysis['max_new_tokens']} --seed {analysis['seed']}")


def variant_options(wildcards):
    return f"{analysis_options(wildcards)} --variants {','.join(config['analysis']['variants'])}"


# -------------------------------------------------------------------------------------------- tables
def table_inputs(wildcards):
    spec = config["tables"][wildcards.table]
    return [eval_json(spec["model"], method, bench) for method in spec["methods"] for bench in BENCHMARKS]


def required_config(key, wildcards):
    """A --config value the regression-check rule cannot do without."""
    if not config.get(key):
        raise ValueError(f"results/check/{wildcards.name}.md needs --config {key}=... "
                         "(candidate: a checkpoint or results directory; reference: a results directory "
                         "or paper:<model>/<method>)")
    return config[key]


def paper_model_pairs():
    """`--paper-model MODEL=PAPER` for every configured model a table compares with a paper model."""
    pairs = {spec["model"]: spec["paper_model"] for spec in config["tables"].values()}
    return " ".join(f"--paper-model {shlex.quote(f'{model}={paper}')}" for model, paper in sorted(pairs.items()))


def gpus_per_job():
    """GPUs held by each stage's jobs per model, for GPU-hours in the report (keys as `vppo report` reads them)."""
    import json

    mapping = {"*": 0}
    for model, spec in MODELS.items():
        train = train_layout(model)
        mapping[f"train/{model}"] = train["nodes"] * train["gpus_per_node"]
        mapping[f"eval/{model}"] = spec.get("eval_resources", {}).get("gpus", 0)
        mapping[f"analysis/{model}"] = analysis_spec().get("gpus", 0)
    return json.dumps(mapping, sort_keys=True)
