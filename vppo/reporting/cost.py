"""What each cell cost, from the ``benchmark:`` files Snakemake writes (snakemake/benchmark.py).

Snakemake writes one TSV per job: a header ``s  h:m:s  max_rss  max_vms  max_uss  max_pss  io_in  io_out
mean_load  cpu_time`` (plus ``jobid rule_name wildcards params threads cpu_usage resources input_size_mb``
with ``--benchmark-extended``) and one row per run (several with ``repeat()``); values it could not
measure are ``NA``, ``None`` is ``-``. A ``.jsonl`` benchmark file has the same fields, one object a line.

Which cell a file belongs to: the extended ``wildcards`` column (``model``, ``method``) when present,
else the path convention ``<cost-root>/<stage>/<model>/<method>[/<detail>...].tsv`` (a file directly
under ``<stage>/`` is a stage-level job without a cell, e.g. data preparation). The stage is always the
first folder. Every recorded run counts (repeats are summed: they were paid for).

GPUs per job, first match wins: (1) the ``--gpus-per-job`` mapping, keys ``stage/model/method``,
``stage/model``, ``stage`` or ``*`` (most specific first); (2) the extended ``resources`` column
(``gpu``, or ``gres`` ``gpu:N`` times ``nodes``); (3) unknown: GPU-hours are shown as missing.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd

from vppo.reporting.results_io import ResultsError

REQUIRED_COLUMNS = ("s",)
NA_VALUES = ["NA", "-"]


def _literal(text) -> dict:
    """A dict column of the extended format (written as a Python repr)."""
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def gpus_from_resources(resources: dict) -> int | None:
    for key in ("gpu", "gpus"):
        if isinstance(resources.get(key), (int, float)):
            return int(resources[key])
    match = re.search(r"gpu(?::[\w-]+)?:(\d+)", str(resources.get("gres", "")))
    if match:
        return int(match.group(1)) * int(resources.get("nodes", 1) or 1)
    return None


def gpus_from_mapping(mapping: dict, stage: str, model: str | None, method: str | None) -> int | None:
    for key in (f"{stage}/{model}/{method}", f"{stage}/{model}", stage, "*"):
        if key in mapping:
            return int(mapping[key])
    return None


def load_gpu_mapping(spec: str | None) -> dict:
    """``--gpus-per-job``: inline JSON or a path to a JSON file, an object of key -> GPU count."""
    if not spec:
        return {}
    text = Path(spec).read_text() if Path(spec).is_file() else spec
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"--gpus-per-job {spec!r}: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) and v >= 0 for v in mapping.values()):
        raise ResultsError(f"--gpus-per-job {spec!r}: expected an object of stage keys -> GPU counts (int >= 0)")
    return mapping


def _read(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".jsonl":
            frame = pd.read_json(path, lines=True)
        else:
            frame = pd.read_csv(path, sep="\t", na_values=NA_VALUES, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ResultsError(f"{path}: not a Snakemake benchmark file ({exc})") from None
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise ResultsError(f"{path}: field '{column}': missing column (header: {list(frame.columns)})")
    frame["s"] = pd.to_numeric(frame["s"], errors="coerce")
    if frame["s"].isna().any():
        raise ResultsError(f"{path}: field 's': non-numeric value")
    return frame


def load_costs(cost_root: str | Path, gpu_mapping: dict | None = None) -> pd.DataFrame:
    """One row per benchmark file: stage, model, method, detail, runs, seconds, cpu_time_s, max_rss_mb,
    gpus, gpus_source, gpu_hours (NaN when the GPU count is unknown), file."""
    root = Path(cost_root)
    gpu_mapping = gpu_mapping or {}
    rows = []
    for path in sorted(list(root.rglob("*.tsv")) + list(root.rglob("*.jsonl"))):
        frame = _read(path)
        parts = path.relative_to(root).with_suffix("").parts
        stage = parts[0] if len(parts) > 1 else "(none)"
        model, method = (parts[1], parts[2]) if len(parts) >= 3 else (None, None)
        detail = "/".join(parts[3:]) if len(parts) > 3 else (parts[-1] if len(parts) == 2 else "")
        wildcards = _literal(frame["wildcards"].iloc[0]) if "wildcards" in frame else {}
        model, method = wildcards.get("model", model), wildcards.get("method", method)
        gpus, source = gpus_from_mapping(gpu_mapping, stage, model, method), "--gpus-per-job"
        if gpus is None and "resources" in frame:
            gpus, source = gpus_from_resources(_literal(frame["resources"].iloc[0])), "benchmark resources"
        seconds = float(frame["s"].sum())
        rows.append({
            "stage": stage, "model": model, "method": method, "detail": detail, "runs": len(frame),
            "seconds": seconds,
            "cpu_time_s": float(pd.to_numeric(frame["cpu_time"], errors="coerce").sum(min_count=1))
            if "cpu_time" in frame else None,
            "max_rss_mb": float(pd.to_numeric(frame["max_rss"], errors="coerce").max()) if "max_rss" in frame else None,
            "gpus": gpus, "gpus_source": source if gpus is not None else None,
            "gpu_hours": seconds * gpus / 3600.0 if gpus is not None else None, "file": str(path),
        })
    return pd.DataFrame(rows, columns=["stage", "model", "method", "detail", "runs", "seconds", "cpu_time_s",
                                       "max_rss_mb", "gpus", "gpus_source", "gpu_hours", "file"])


def sum_if_all_known(values: pd.Series) -> float:
    """A total only when every part is known: one job with an unknown GPU count makes the GPU-hours unknown."""
    return values.sum() if values.notna().all() else float("nan")


def cost_per_cell(costs: pd.DataFrame) -> pd.DataFrame:
    """Sums per (stage, model, method); GPU-hours only when every file of the group knows its GPUs."""
    if costs.empty:
        return costs
    keyed = costs.fillna({"model": "—", "method": "—"})
    grouped = keyed.groupby(["stage", "model", "method"], sort=True)
    out = grouped.agg(jobs=("file", "count"), runs=("runs", "sum"), seconds=("seconds", "sum"),
                      cpu_time_s=("cpu_time_s", lambda s: s.sum(min_count=1)),
                      max_rss_mb=("max_rss_mb", "max"),
                      gpu_hours=("gpu_hours", sum_if_all_known))
    return out.reset_index()


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
