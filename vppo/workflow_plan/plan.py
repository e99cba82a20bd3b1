"""What the configuration asks for: the table cells, every target, and each job's spec, read from one validated
config (after :mod:`vppo.workflow_plan.config`). Functions that Snakemake calls per job take its ``wildcards``
(anything with ``.model`` / ``.method``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vppo.catalog import BASE_METHOD, UNTRAINED_METHODS
from vppo.training.recipes import Recipe
from vppo.workflow_plan.config import RECIPE_LAYOUT, recipe

#: Findings of `vppo doctor` (workflow/rules/preflight.smk), an ancient() input of every GPU job: it runs first.
PREFLIGHT = "results/preflight/doctor.txt"
#: Tables, figures, report and study read result JSONs and logs with pandas and matplotlib: one CPU, a few GB and
#: minutes, whatever the model (a config's ``light_resources`` replaces this).
LIGHT_RESOURCES = {"cpus": 1, "mem_mb": 4000, "runtime": 30}


def file_digest(path) -> str:
    """Short sha256 of a file's bytes, for params that must rerun a job when the file changes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def eval_json(model: str, method: str, benchmark: str) -> str:
    return f"results/eval/{model}/{method}/{benchmark}.json"


class Plan:
    """The configured study: ``config`` is Snakemake's validated config."""

    def __init__(self, config: dict):
        self.config = config
        self.models = config["models"]
        self.benchmarks = config["benchmarks"]
        self.eval = config["eval"]
        self.cluster = config["cluster"]
        self.cpu = config.get("cpu_resources", {})
        # Each preset prepares its data into its own folder: switching presets reuses what each already built
        # (one shared folder made every switch re-prepare the data and rerun everything downstream).
        self.preset = config["preset"]
        self.train_data = f"resources/data/{self.preset}/train"
        self.eval_data = f"resources/data/{self.preset}/eval"
        self.all_methods = sorted({m for spec in self.models.values() for m in spec["methods"]})

    # ------------------------------------------------------------------------------------------------ cells
    def eval_cells(self) -> list[tuple[str, str, str]]:
        """(model, method, benchmark) of every configured table cell."""
        return [(model, method, bench) for model, spec in self.models.items()
                for method in spec["methods"] for bench in self.benchmarks]

    def trained_methods(self, model: str) -> list[str]:
        """Methods of a model that the workflow trains (not base, not a released checkpoint)."""
        spec = self.models[model]
        return [m for m in spec["methods"] if m not in UNTRAINED_METHODS and m not in spec.get("released", {})]

    def base_model_dir(self, wildcards) -> str:
        """A model's base checkpoint; ``base: <another model key>`` shares that model's (a seed study's seeds
        start from one checkpoint, fetched or built once)."""
        base = self.models[wildcards.model]["base"]
        return f"resources/models/{base if base in self.models else wildcards.model}/base"

    def checkpoint_dir(self, wildcards) -> str:
        """The checkpoint a cell evaluates: the base model, a released checkpoint, or our converted training."""
        if wildcards.method == BASE_METHOD:
            return self.base_model_dir(wildcards)
        if wildcards.method in self.models[wildcards.model].get("released", {}):
            return f"resources/models/{wildcards.model}/released_{wildcards.method}"
        return f"results/checkpoints/{wildcards.model}/{wildcards.method}"

    def training_runs(self) -> list[str]:
        """Output folders of every training job (training_log.jsonl inside each)."""
        return [f"results/train/{model}/{method}" for model in self.models for method in self.trained_methods(model)]

    # ---------------------------------------------------------------------------------------------- targets
    def analysis_targets(self) -> list[str]:
        analysis = self.config.get("analysis")
        if not analysis:
            return []
        return [f"results/analysis/{analysis['model']}/{method}.json" for method in analysis["methods"]]

    def gradient_variance_targets(self) -> list[str]:
        """The measured gradient variance of the analysis model's base checkpoint, where the config asks for it."""
        analysis = self.config.get("analysis") or {}
        if not analysis.get("gradient_variance"):
            return []
        return [f"results/analysis/{analysis['model']}/gradient_variance.json"]

    def variant_targets(self) -> list[str]:
        """One dependency-pass comparison per analysed method, when `analysis.variants` names passes."""
        analysis = self.config.get("analysis") or {}
        if not analysis.get("variants"):
            return []
        return [f"results/analysis/{analysis['model']}/{method}.variants.json" for method in analysis["methods"]]

    def table_files(self) -> list[str]:
        return [f"results/tables/{name}.{ext}" for name in self.config.get("tables", {}) for ext in ("md", "csv", "tex")]

    def study_targets(self) -> list[str]:
        return ["results/study/study.md"] if self.config.get("study") else []

    def all_targets(self) -> list[str]:
        """Tables, figures and report, and every cell and analysis they show: Snakemake does not rebuild a
        deleted intermediate file whose consumers are up to date, so the cells are targets themselves (a deleted
        cell is rebuilt, then everything that shows it)."""
        cells = [eval_json(*cell) for cell in self.eval_cells()]
        return (self.table_files() + ["results/figures", "results/report.html"] + cells + self.analysis_targets()
                + self.variant_targets() + self.gradient_variance_targets() + self.study_targets())

    # ------------------------------------------------------------------------------------------------ specs
    def recipe_of(self, model: str) -> Recipe:
        return recipe(self.models[model]["recipe"])

    def train_layout(self, model: str) -> dict:
        """{nodes, gpus_per_node} of a model's training job: its recipe's num_nodes and gpus_per_node."""
        loaded = self.recipe_of(model)
        return {key: getattr(loaded, recipe_key) for key, recipe_key in RECIPE_LAYOUT.items()}

    def train_spec(self, wildcards) -> dict:
        """The training job's resources: the config's train_resources (cpus, mem_mb, runtime) and the recipe's
        layout."""
        return {**self.models[wildcards.model].get("train_resources", {}), **self.train_layout(wildcards.model)}

    def eval_spec(self, wildcards) -> dict:
        return self.models[wildcards.model].get("eval_resources", {})

    def analysis_spec(self, wildcards=None) -> dict:
        return self.config.get("analysis", {}).get("resources") or self.cpu

    def check_spec(self, wildcards=None) -> dict:
        return self.config.get("check_resources") or self.cpu

    def light_spec(self, wildcards=None) -> dict:
        """Tables, figures, report and study: ``light_resources``, else :data:`LIGHT_RESOURCES`."""
        return self.config.get("light_resources") or LIGHT_RESOURCES

    def convert_spec(self, wildcards) -> dict:
        """Gathering sharded weights needs host memory of a few times the model size: sized per model."""
        return self.models[wildcards.model].get("convert_resources", self.cpu)

    def params_b(self, model: str | None) -> float | None:
        return self.models.get(model, {}).get("params_b")

    def any_gpu_job(self) -> bool:
        specs = [spec.get("eval_resources", {}) for spec in self.models.values()]
        specs += [self.train_layout(m) for m in self.models] + [self.analysis_spec(), self.check_spec()]
        return any(spec.get("gpus_per_node", 0) or spec.get("gpus", 0) for spec in specs)
