"""Names shared by every stage: benchmarks, model sizes, and the paper's labels for them.

Keys here are the wildcards of the Snakemake targets (``results/eval/{model}/{method}/{benchmark}.json``),
the ``--benchmarks`` values of ``vppo eval`` and the lmms-eval task names (``vppo_<key>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    key: str
    paper_name: str  # column header in the paper's tables (results/reference/*.csv)
    expected_rows: int  # rows in chamber111/VPPO-Eval (docs/protocol.md section 5)
    answer_kind: str  # "number", "expression" or "choice": what the fixtures generate

    @property
    def task(self) -> str:
        return f"vppo_{self.key}"


#: In the column order of the paper's main table.
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mathverse", "MathVerse", 2180, "choice"),
    Benchmark("dynamath", "DynaMath", 3666, "expression"),
    Benchmark("mmk12", "MMK12", 2000, "number"),
    Benchmark("geo3k", "Geo3k", 601, "number"),
    Benchmark("mathvision", "MathVision", 2907, "expression"),
    Benchmark("wemath", "We-Math", 1740, "choice"),
    Benchmark("logicvista", "LogicVista", 447, "choice"),
    Benchmark("mmmu_pro", "MMMU-Pro", 1730, "choice"),
)
BENCHMARK_KEYS: tuple[str, ...] = tuple(b.key for b in BENCHMARKS)
BENCHMARK_BY_KEY: dict[str, Benchmark] = {b.key: b for b in BENCHMARKS}


def resolve_benchmarks(spec: str) -> list[Benchmark]:
    """``"all"`` or a comma-separated list of keys; unknown keys raise ``ValueError`` naming them."""
    if spec.strip() == "all":
        return list(BENCHMARKS)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BENCHMARK_BY_KEY]
    if unknown or not keys:
        raise ValueError(f"unknown benchmark(s) {unknown or spec!r}; choose from: all, {', '.join(BENCHMARK_KEYS)}")
    return [BENCHMARK_BY_KEY[k] for k in keys]


#: Model-size keys used in result paths, with the paper's label (results/reference/*.csv "model" column).
MODEL_PAPER_NAMES: dict[str, str] = {
    "qwen2.5-vl-7b": "Qwen2.5-VL-7B",
    "qwen2.5-vl-32b": "Qwen2.5-VL-32B",
    "tiny": "tiny (offline smoke model)",
}

#: Method keys -> the paper's labels. "base" is the untrained model; the ablation table calls the
#: TAS-only / TGF-only rows "tas_only" / "tgf_only" (results/reference/paper_ablation_7b.csv).
METHOD_PAPER_NAMES: dict[str, str] = {
    "base": "base",
    "grpo": "grpo",
    "dapo": "dapo",
    "vppo": "vppo",
    "vppo_tas_only": "tas_only",
    "vppo_tgf_only": "tgf_only",
}

#: Methods evaluated but never trained by us ("base": the model before RL).
UNTRAINED_METHODS = ("base",)
#: ``vppo_k<ratio>``: the vppo preset with TGF keeping that fraction of tokens (the paper's k sweep).
KEEP_RATIO_METHOD = re.compile(r"^vppo_k(\d+(?:\.\d*)?|\.\d+)$")


def parse_method(name: str, trained_only: bool = False) -> tuple[str, float | None]:
    """The one method-name grammar (config schema check, ``vppo train``, presets): ``name`` -> (the key of
    its preset in METHOD_PAPER_NAMES, the keep ratio of a ``vppo_k<ratio>`` name or None).

    A keep ratio must lie in (0, 1]; ``trained_only`` refuses "base". Anything else raises ValueError.
    """
    names = [m for m in METHOD_PAPER_NAMES if not (trained_only and m in UNTRAINED_METHODS)]
    if name in names:
        return name, None
    match = KEEP_RATIO_METHOD.match(name)
    if match and 0.0 < float(match.group(1)) <= 1.0:
        return "vppo", float(match.group(1))
    raise ValueError(f"unknown method {name!r}; valid: {sorted(names)} or vppo_k<ratio> with 0 < ratio <= 1 "
                     "(e.g. vppo_k0.2)")
