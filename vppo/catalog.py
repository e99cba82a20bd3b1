"""The study registry: every name of the study, written once, torch-free (the Snakefile imports it).

Keys here are the wildcards of the Snakemake targets (``results/eval/{model}/{method}/{benchmark}.json``,
``results/tables/{table}.md``), the ``--benchmarks``/``--method``/``--table`` values of the commands and the
lmms-eval task names (``vppo_<key>``). The config schema's enums are filled from here
(:func:`fill_config_schema`, called by ``workflow/rules/common.smk``), so the schema never lists them.

- Benchmarks: :data:`BENCHMARKS` are the supported ones; :data:`PAPER_AVG` is the paper's Avg set (its eight,
  in its column order). The paper's Avg is the mean over that set only: a supported benchmark outside it is an
  extra column of the tables and checks, never part of Avg.
- Methods: :class:`MethodPreset` and :data:`METHOD_PRESETS` (what training runs; ``vppo.algorithm`` holds the
  maths that reads them), their labels in the paper's tables (:data:`METHOD_PAPER_NAMES`), and the one
  method-name grammar (:func:`parse_method`, ``vppo_k<ratio>``).
- Tables: :data:`TABLES` (title, default methods, the paper model they compare with). The paper's numbers are
  ``results/reference/paper_<table>_<size>.csv``, read by :mod:`vppo.reference`.

How to add (docs/design.md lists the files): a method preset = one line in :data:`METHOD_PRESETS` and its
one-line description in :data:`METHOD_DESCRIPTIONS` (+ its paper label in :data:`METHOD_PAPER_NAMES` if the paper
has the row); a benchmark = one :class:`Benchmark` in
:data:`EXTRA_BENCHMARKS` + its task folder ``benchmarks/<key>/`` + its data; a table = one :class:`Table` here
(+ its reference CSV); then name them in a config (``workflow/config/*.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass

from vppo.errors import OptionError
from vppo.model_families import FAMILIES


# ------------------------------------------------------------------------------------------ benchmarks

@dataclass(frozen=True)
class Benchmark:
    key: str
    paper_name: str  # column header in the tables and in results/reference/*.csv
    expected_rows: int  # rows of the real evaluation set (chamber111/VPPO-Eval for the paper's eight)
    answer_kind: str  # "number", "expression" or "choice": what the offline fixtures generate
    source_name: str  # its LLaMA-Factory dataset name (data/vppo/<source_name>.json of the eval data folder)

    @property
    def task(self) -> str:
        return f"vppo_{self.key}"


#: The paper's eight, in the column order of its main table. Their mean is the paper's "Avg". The LLaMA-Factory
#: names are the source datasets' hub ids with "/" -> "_", as PAPO-Eval names them (DynaMath_DynaMath_Sample and
#: MathLLMs_MathVision seen in public loaders of VPPO-Eval; MMK12's "PAPO_MMK12" is the least certain: if the
#: download names it otherwise, the import lists the unclaimed file; pass name_map_mmk12=<name>).
PAPER_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mathverse", "MathVerse", 2180, "choice", "AI4Math_MathVerse"),
    Benchmark("dynamath", "DynaMath", 3666, "expression", "DynaMath_DynaMath_Sample"),
    Benchmark("mmk12", "MMK12", 2000, "number", "PAPO_MMK12"),
    Benchmark("geo3k", "Geo3k", 601, "number", "hiyouga_geometry3k"),
    Benchmark("mathvision", "MathVision", 2907, "expression", "MathLLMs_MathVision"),
    Benchmark("wemath", "We-Math", 1740, "choice", "We-Math_We-Math"),
    Benchmark("logicvista", "LogicVista", 447, "choice", "lscpku_LogicVista"),
    Benchmark("mmmu_pro", "MMMU-Pro", 1730, "choice", "MMMU_MMMU_Pro"),
)
#: Supported benchmarks outside the paper's Avg set: shown as extra columns, never averaged into Avg.
EXTRA_BENCHMARKS: tuple[Benchmark, ...] = (
    # The mini study (workflow/config/mini.yaml; vppo.data.mini_task): its held-out grid questions and the
    # text-only control. Generated offline by `prepare-data eval --source mini`; rows = the mini preset's n_rows.
    Benchmark("mini_heldout", "Grid (held-out)", 256, "choice", "vppo_mini_heldout"),
    Benchmark("mini_control", "Text-only control", 128, "choice", "vppo_mini_control"),
)

#: Every supported benchmark ("all" of ``--benchmarks``): the paper's eight first, then the extras.
BENCHMARKS: tuple[Benchmark, ...] = PAPER_BENCHMARKS + EXTRA_BENCHMARKS
BENCHMARK_KEYS: tuple[str, ...] = tuple(b.key for b in BENCHMARKS)
BENCHMARK_BY_KEY: dict[str, Benchmark] = {b.key: b for b in BENCHMARKS}
#: The paper's Avg set, in its column order (the lmms-eval group ``benchmarks/vppo_all.yaml`` is exactly this).
PAPER_AVG: tuple[str, ...] = tuple(b.key for b in PAPER_BENCHMARKS)
#: The Avg column's key in results and its header in the tables and reference CSVs.
AVG, AVG_NAME = "avg", "Avg"


def resolve_benchmarks(spec: str) -> list[Benchmark]:
    """``"all"`` (every supported benchmark), ``"paper"`` (the paper's Avg set) or comma-separated keys;
    unknown keys raise :class:`vppo.errors.OptionError` (a ValueError) naming them."""
    named = {"all": list(BENCHMARKS), "paper": [BENCHMARK_BY_KEY[k] for k in PAPER_AVG]}
    if spec.strip() in named:
        return named[spec.strip()]
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BENCHMARK_BY_KEY]
    if unknown or not keys:
        raise OptionError(f"unknown benchmark(s) {unknown or spec!r}; choose from: all, paper, {', '.join(BENCHMARK_KEYS)}")
    return [BENCHMARK_BY_KEY[k] for k in keys]


def column_key(header: str) -> str | None:
    """The benchmark key (or ``avg``) of a table header such as ``We-Math`` or ``Avg``; None if unknown."""
    return {b.paper_name: b.key for b in BENCHMARKS}.get(header.strip(), AVG if header.strip() == AVG_NAME else None)


# -------------------------------------------------------------------------------------------------- models

#: Model keys used in result paths, with the paper's label (results/reference/*.csv "model" column).
MODEL_PAPER_NAMES: dict[str, str] = {
    "qwen2.5-vl-7b": "Qwen2.5-VL-7B",
    "qwen2.5-vl-32b": "Qwen2.5-VL-32B",
    "qwen3-vl-8b": "Qwen3-VL-8B (beyond the paper)",
    "tiny": "tiny (offline smoke model)",
    "mini_s0": "mini (1M-parameter Qwen2.5-VL, grid task), seed 0",
}
#: The models the paper reports, which a table can compare with (a config table's ``paper_model``).
PAPER_MODELS: tuple[str, ...] = ("qwen2.5-vl-7b", "qwen2.5-vl-32b")
#: A table's ``paper_model`` when the paper has no such experiment: its paper columns stay out.
NO_PAPER_MODEL = "none"


# ------------------------------------------------------------------------------------------------- methods

#: The dependency pass's two choices, by name: the keys of ``vppo.algorithm.DEPENDENCY_ESTIMATORS`` (k3 on the
#: sampled token = the official code; kl = the exact full-vocabulary KL) and of ``vppo.masking.MASKING_STRATEGIES``
#: (patch blackening = the official code), copied here so the registry stays torch-free (tests/test_registry.py
#: keeps them equal). The first of each is the published run's.
DEPENDENCY_ESTIMATOR_NAMES: tuple[str, ...] = ("k3", "kl")
MASKING_NAMES: tuple[str, ...] = ("patch", "grey", "noise", "blur")

@dataclass(frozen=True)
class MethodPreset:
    """Everything that distinguishes the trained methods; defaults are the published VPPO-7B run.

    dependency_estimator and masking are the dependency pass (one of :data:`DEPENDENCY_ESTIMATOR_NAMES` and of
    :data:`MASKING_NAMES`): the preset is their home, so the method name alone selects them in training, tables,
    the study and the configs; a recipe may still set them for a preset that keeps the defaults
    (``vppo.training.recipes.method_preset``). A training run records these fields (``dataclasses.asdict``) and
    a resume compares them: a new knob is a new field with the old behaviour as its default.
    """

    name: str
    use_tgf: bool
    use_tas: bool
    keep_ratio: float = 0.4
    beta_min: float = 0.9
    dynamic_sampling: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0
    entropy_coef: float = 0.06
    dependency_estimator: str = "k3"
    masking: str = "patch"
    #: TAS trajectory score over the TGF-kept tokens instead of all valid tokens. The official code
    #: (dp_actor.py: ``masked_low_var_kl = low_var_kl * response_mask``, both for the mini-batch min/max
    #: and for the micro-batch scores) averages over ALL valid tokens, so False is the default.
    tas_score_kept_tokens_only: bool = False

    @property
    def needs_masked_pass(self) -> bool:
        """True when the extra forward pass with masked images is needed (TGF or TAS on)."""
        return self.use_tgf or self.use_tas


#: The trained methods. grpo = the plain GRPO baseline: symmetric clip 0.2/0.2 (no clip-higher) and no
#: online filtering; it keeps dual clip, token-mean, the entropy penalty and no KL term so it differs from
#: dapo only in DAPO's two tricks (the published config disables the KL term for every run). dapo = GRPO
#: advantages + clip-higher + online filtering + token-mean (docs/protocol.md §6) = vppo with TGF and TAS off.
METHOD_PRESETS: dict[str, MethodPreset] = {
    p.name: p
    for p in (
        MethodPreset("grpo", use_tgf=False, use_tas=False, dynamic_sampling=False, clip_high=0.2),
        MethodPreset("dapo", use_tgf=False, use_tas=False),
        MethodPreset("vppo", use_tgf=True, use_tas=True),
        MethodPreset("vppo_tas_only", use_tgf=False, use_tas=True),
        MethodPreset("vppo_tgf_only", use_tgf=True, use_tas=False),
        # vppo with another dependency pass: the two questions the paper leaves open (its code: k3 + patch).
        MethodPreset("vppo_exact_kl", use_tgf=True, use_tas=True, dependency_estimator="kl"),
        MethodPreset("vppo_grey", use_tgf=True, use_tas=True, masking="grey"),
        MethodPreset("vppo_noise", use_tgf=True, use_tas=True, masking="noise"),
        MethodPreset("vppo_blur", use_tgf=True, use_tas=True, masking="blur"),
    )
}

#: The untrained base model's method key: evaluated, never trained.
BASE_METHOD = "base"
UNTRAINED_METHODS: tuple[str, ...] = (BASE_METHOD,)
#: Method keys -> their row label in the paper's tables (results/reference/*.csv "method"/"setting"); a method
#: not listed has no paper row. The ablation table calls the TAS-only / TGF-only rows "tas_only" / "tgf_only".
METHOD_PAPER_NAMES: dict[str, str] = {
    BASE_METHOD: "base", "grpo": "grpo", "dapo": "dapo", "vppo": "vppo",
    "vppo_tas_only": "tas_only", "vppo_tgf_only": "tgf_only",
}
#: Method keys -> one line on what the method is (``vppo train --help`` lists them).
METHOD_DESCRIPTIONS: dict[str, str] = {
    BASE_METHOD: "the untrained base model (evaluated, never trained)",
    "grpo": "GRPO baseline: symmetric clip 0.2/0.2, no online filtering",
    "dapo": "DAPO: GRPO + clip-higher 0.2/0.28 + online filtering (vppo with TGF and TAS off)",
    "vppo": "VPPO as published: TGF keeps the top 40% tokens, TAS scales advantages; k3, patch-blackened images",
    "vppo_tas_only": "ablation: vppo with TAS only (every token keeps its gradient)",
    "vppo_tgf_only": "ablation: vppo with TGF only (advantages unscaled)",
    "vppo_exact_kl": "vppo, dependency = exact full-vocabulary KL (the paper's formula) instead of k3 on the sampled token",
    "vppo_grey": "vppo, dependency pass with each image replaced by uniform grey instead of patch blackening",
    "vppo_noise": "vppo, dependency pass with Gaussian pixel noise instead of patch blackening",
    "vppo_blur": "vppo, dependency pass with a Gaussian blur instead of patch blackening",
}
#: ``vppo_k<ratio>``: the KEEP_RATIO_PRESET with TGF keeping that fraction of tokens (the paper's k sweep).
KEEP_RATIO_PRESET = "vppo"
KEEP_RATIO_METHOD = re.compile(rf"^{KEEP_RATIO_PRESET}_k(\d+(?:\.\d*)?|\.\d+)$")


def method_names(trained_only: bool = False) -> list[str]:
    """The fixed method names (presets, and "base" unless ``trained_only``), without the k sweep."""
    return [*([] if trained_only else UNTRAINED_METHODS), *METHOD_PRESETS]


def method_grammar(trained_only: bool = False) -> str:
    """The valid method names in words, for help texts and error messages."""
    return (" | ".join(method_names(trained_only)) + f" | {KEEP_RATIO_PRESET}_k<ratio> with 0 < ratio <= 1 "
            f"(e.g. {KEEP_RATIO_PRESET}_k0.2)")


def method_descriptions(trained_only: bool = False) -> str:
    """One line per fixed method name and the k sweep, for help texts."""
    names = method_names(trained_only)
    width = max(len(name) for name in names)
    # A preset without its line still trains (tests/test_registry.py asks for the line)
    lines = [f"  {name:<{width}}  {METHOD_DESCRIPTIONS.get(name, '(undescribed)')}" for name in names]
    lines.append(f"  {KEEP_RATIO_PRESET + '_k<ratio>':<{width}}  {KEEP_RATIO_PRESET} with TGF keeping that fraction "
                 "of each response's tokens")
    return "\n".join(lines)


def parse_method(name: str, trained_only: bool = False) -> tuple[str, float | None]:
    """The one method-name grammar (config check in ``common.smk``, ``vppo train``, presets): ``name`` -> (its
    preset key, or "base"; the keep ratio of a ``vppo_k<ratio>`` name or None).

    A keep ratio must lie in (0, 1]; ``trained_only`` refuses "base". Anything else raises OptionError (a ValueError).
    """
    if name in method_names(trained_only):
        return name, None
    match = KEEP_RATIO_METHOD.match(name)
    if match and 0.0 < float(match.group(1)) <= 1.0:
        return KEEP_RATIO_PRESET, float(match.group(1))
    raise OptionError(f"unknown method {name!r}; valid: {method_grammar(trained_only)}")


def get_method(name: str) -> MethodPreset:
    """The preset of a trained method name; ``vppo_k0.2`` style names give the vppo preset with that keep ratio."""
    key, keep_ratio = parse_method(name, trained_only=True)
    preset = METHOD_PRESETS[key]
    return preset if keep_ratio is None else dataclasses.replace(preset, name=name, keep_ratio=keep_ratio)


# -------------------------------------------------------------------------------------------------- tables

@dataclass(frozen=True)
class Table:
    """One table of results next to the paper's: ``results/tables/<name>.{md,csv,tex}``.

    Its paper numbers are the rows of ``results/reference/paper_<name>_<size>.csv`` (``vppo.reference``);
    ``name`` may contain ``_``."""

    name: str
    title: str
    default_methods: tuple[str, ...]  # ``vppo tables --methods`` when not given
    paper_model: str  # the paper model whose numbers it shows by default (a key of PAPER_MODELS)


#: In the paper's order (the report shows them in this order).
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("main", "Main results", ("base", "grpo", "dapo", "vppo"), "qwen2.5-vl-7b"),
        Table("scaling", "Scaling to 32B", ("grpo", "dapo", "vppo"), "qwen2.5-vl-32b"),
        Table("ablation", "Ablation of TGF and TAS", ("vppo", "vppo_tas_only", "vppo_tgf_only", "dapo"),
              "qwen2.5-vl-7b"),
        # The mini study (workflow/config/mini.yaml): no paper numbers to sit beside.
        Table("mini_study", "Mini study: GRPO, DAPO, VPPO and its ablations on the grid task",
              ("base", "grpo", "dapo", "vppo", "vppo_tas_only", "vppo_tgf_only"), NO_PAPER_MODEL),
    )
}
TABLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")  # a file-name stem and a Snakemake wildcard value


# ------------------------------------------------------------------------------------------- config schema

def fill_config_schema(schema: dict, presets: list[str], recipes: list[str]) -> dict:
    """``workflow/schemas/config.schema.yaml`` with its enums filled from this registry: benchmark keys, table
    names, paper models, the method grammar, the model families, and the given preset names (workflow/config/*.yaml stems) and
    recipe names (vppo/training/recipes/*.yaml stems), the dependency passes of ``analysis.variants``. The schema
    file itself names none of them."""
    filled = copy.deepcopy(schema)
    defs, props = filled["$defs"], filled["properties"]
    defs["benchmark"]["enum"] = list(BENCHMARK_KEYS)
    defs["method"]["description"] = f"{method_grammar()} (vppo.catalog.parse_method, applied by common.smk)"
    defs["table"]["properties"]["paper_model"]["enum"] = [*PAPER_MODELS, NO_PAPER_MODEL]
    props["tables"]["propertyNames"] = {"enum": list(TABLES)}
    props["preset"]["enum"] = sorted(presets)
    props["model_family"]["enum"] = list(FAMILIES)
    props["models"]["additionalProperties"]["properties"]["recipe"]["enum"] = sorted(recipes)
    props["analysis"]["properties"]["variants"]["items"]["enum"] = dependency_variants()
    return filled


def dependency_variants() -> list[str]:
    """Every dependency pass as ``vppo analyze --variants`` names it: ``<masking>:<estimator>``."""
    return [f"{masking}:{estimator}" for masking in MASKING_NAMES for estimator in DEPENDENCY_ESTIMATOR_NAMES]
