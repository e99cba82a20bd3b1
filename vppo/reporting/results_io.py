"""Loading every input of the reporting stage, validated, in one place.

- Evaluation results ``<eval-root>/<model>/<method>/<benchmark>.json`` (schema ``vppo.eval/1``, written by
  ``vppo eval``) -> one :class:`pandas.DataFrame` row per cell (:func:`load_eval_frame`).
- The paper's numbers: :mod:`vppo.reference` (shared with ``vppo check``).
- Training logs ``<train-root>/<model>/<method>/training_log.jsonl`` (:func:`load_training_log`).
- Dependency analyses ``<analysis-root>/<model>/<method>.json`` (schema ``vppo.analysis/1``).

A missing file is a missing cell (``None``/absent row), never a zero. A file that exists but is malformed
raises :class:`ResultsError` naming the file and the field: a wrong number must not slip into a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from vppo.errors import InputError
from vppo.catalog import BENCHMARKS, parse_method
from vppo.evaluation.results import ResultError, field_errors, read_result
from vppo.reporting.analysis import ANALYSIS_SCHEMA_ID



class ResultsError(InputError, ValueError):
    """An input of the reporting stage is malformed; the message names the file and the field."""


_NUMBER, _INT, _STR = {"type": "number"}, {"type": "integer"}, {"type": "string"}

_SHARES = {"type": "object", "additionalProperties": {
    "type": "object", "required": ["n_tokens", "mean", "share_of_dependency", "share_of_tokens"],
    "properties": {"n_tokens": _INT, "mean": _NUMBER, "share_of_dependency": {"type": ["number", "null"]},
                   "share_of_tokens": _NUMBER}}}

_HISTOGRAM = {"type": "object", "required": ["edges", "counts"],
              "properties": {"edges": {"type": "array", "items": _NUMBER}, "counts": {"type": "array", "items": _INT}}}

#: What ``vppo analyze`` writes (the fields the figures read).
ANALYSIS_JSON_SCHEMA: dict = {
    "type": "object",
    "required": ["schema", "model", "method", "estimator", "token_dependency", "trajectory_mean_dependency"],
    "properties": {
        "schema": {"const": ANALYSIS_SCHEMA_ID},
        "model": _STR, "method": _STR, "estimator": {"enum": ["k3", "kl"]},
        "token_dependency": {"type": "object", "required": ["n_tokens", "histogram", "log_histogram", "quantiles"],
                             "properties": {"n_tokens": _INT, "histogram": _HISTOGRAM, "log_histogram": _HISTOGRAM,
                                            # optional: analyses written before the curve was recorded lack it
                                            "concentration": {"type": "object", "required": ["top_fraction", "share"],
                                                              "properties": {
                                                                  "top_fraction": {"type": "array", "items": _NUMBER},
                                                                  "share": {"type": "array",
                                                                            "items": {"type": ["number", "null"]}}}}}},
        "trajectory_mean_dependency": {"type": "object", "required": ["values", "histogram"],
                                       "properties": {"values": {"type": "array", "items": _NUMBER},
                                                      "histogram": _HISTOGRAM}},
        # optional, as the concentration curve: what the study's findings figure reads when it is there
        "by_role": _SHARES, "by_benchmark": _SHARES,
        "trajectories": {"type": "array", "items": {"type": "object", "required": ["benchmark"],
                                                    "properties": {"benchmark": _STR,
                                                                   "mean_dependency": {"type": ["number", "null"]}}}},
    },
}


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def validate(instance: Any, schema: dict, path: Path) -> None:
    problems = field_errors(instance, schema)
    if problems:
        raise ResultsError(f"{path}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------- eval results

#: Columns of the per-cell frame, in order. ``ours``/``stderr`` are percent.
CELL_COLUMNS = ["model", "method", "benchmark", "ours", "stderr", "n_questions", "n_samples", "k", "metric",
                "backend", "seed", "limit", "bad_rows", "sampling", "versions", "checkpoint", "checkpoint_sha256",
                "data_path", "data_sha256", "wall_time_s", "created", "model_label", "method_label", "eval_file"]


def eval_file(eval_root: str | Path, model: str, method: str, benchmark: str) -> Path:
    return Path(eval_root) / model / method / f"{benchmark}.json"


def load_eval_json(path: str | Path) -> dict:
    """One validated result file; the file name must agree with its ``benchmark`` field."""
    path = Path(path)
    try:
        data = read_result(path)
    except ResultError as exc:
        raise ResultsError(str(exc)) from None
    return data


def cell_record(data: dict, model: str, method: str, path: Path) -> dict:
    """The frame row of one result file; ``model``/``method`` are the path keys (labels kept apart)."""
    return {
        "model": model, "method": method, "benchmark": data["benchmark"], "ours": float(data["accuracy"]),
        "stderr": float(data["stderr"]), "n_questions": data["n_questions"], "n_samples": data["n_samples"],
        "k": data["k"], "metric": data["metric"], "backend": data["backend"], "seed": data["seed"],
        "limit": data.get("limit"), "bad_rows": data.get("bad_rows"),
        "sampling": json.dumps(data["sampling"], sort_keys=True), "versions": json.dumps(data["versions"], sort_keys=True),
        "checkpoint": data["checkpoint"], "checkpoint_sha256": data["checkpoint_sha256"],
        "data_path": data["data"]["path"], "data_sha256": data["data"]["sha256"],
        "wall_time_s": float(data["wall_time_s"]), "created": data.get("created"),
        "model_label": data["model"], "method_label": data["method"], "eval_file": str(path),
    }


def load_eval_frame(eval_root: str | Path, models: Iterable[str] | None = None, methods: Iterable[str] | None = None,
                    benchmarks: Iterable[str] | None = None) -> pd.DataFrame:
    """Every present result file under ``eval_root`` (optionally restricted), one row per cell.

    Absent files are simply absent rows (the tables show them as missing); malformed ones raise.
    """
    root = Path(eval_root)
    bench_keys = list(benchmarks) if benchmarks is not None else [b.key for b in BENCHMARKS]
    model_keys = list(models) if models is not None else subdirs(root)
    rows = []
    for model in model_keys:
        method_keys = list(methods) if methods is not None else subdirs(root / model)
        for method in method_keys:
            for bench in bench_keys:
                path = eval_file(root, model, method, bench)
                if path.is_file():
                    rows.append(cell_record(load_eval_json(path), model, method, path))
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def subdirs(path: Path | None) -> list[str]:
    """Names of the visible folders under ``path`` (model or method keys), sorted; none if it is absent."""
    if path is None or not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


# ----------------------------------------------------------------------------------- training, analysis

TRAINING_CURVE_KEYS = ("reward", "accuracy", "kept_token_fraction", "alpha_mean", "alpha_min", "alpha_max", "entropy",
                       "completions/mean_length", "dependency_kept_mean", "dependency_dropped_mean")


def training_log_file(train_root: str | Path, model: str, method: str) -> Path:
    return Path(train_root) / model / method / "training_log.jsonl"


def load_training_log(path: str | Path) -> pd.DataFrame:
    """One row per logged step; ``step`` required on every line, curve keys as floats (null -> NaN)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path}: line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            raise ResultsError(f"{path}: line {number}: field 'step': missing or not a number")
        for key in TRAINING_CURVE_KEYS:
            value = record.get(key)
            if value is not None and not isinstance(value, (int, float)):
                raise ResultsError(f"{path}: line {number}: field '{key}': {value!r} is not a number or null")
        records.append(record)
    frame = pd.DataFrame(records)
    for key in ("step", *TRAINING_CURVE_KEYS):
        frame[key] = pd.to_numeric(frame[key], errors="coerce") if key in frame else float("nan")
    return frame.sort_values("step", kind="stable").reset_index(drop=True) if len(frame) else frame


def analysis_file(analysis_root: str | Path, model: str, method: str) -> Path:
    return Path(analysis_root) / model / f"{method}.json"


def analysed_methods(analysis_root: str | Path, model: str) -> list[str]:
    """The methods with an analysis file under ``<analysis_root>/<model>/``, sorted. The folder also holds files
    that are not one method's analysis (``<method>.variants.json``, the model's ``gradient_variance.json``)."""
    folder = Path(analysis_root) / model
    return sorted(p.stem for p in folder.glob("*.json") if _is_method(p.stem))


def _is_method(name: str) -> bool:
    try:
        parse_method(name)
    except ValueError:
        return False
    return True


def load_analysis(path: str | Path) -> dict:
    path = Path(path)
    data = read_json(path)
    validate(data, ANALYSIS_JSON_SCHEMA, path)
    for part in ("histogram", "log_histogram"):
        hist = data["token_dependency"][part]
        if len(hist["edges"]) != len(hist["counts"]) + 1:
            raise ResultsError(f"{path}: field 'token_dependency.{part}': needs len(edges) == len(counts) + 1")
    curve = data["token_dependency"].get("concentration")
    if curve is not None and len(curve["top_fraction"]) != len(curve["share"]):
        raise ResultsError(f"{path}: field 'token_dependency.concentration': needs len(top_fraction) == len(share)")
    return data
