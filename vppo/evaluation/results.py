"""The result files of ``vppo eval`` (schema "vppo.eval/1"): building, validating, reading, writing.

Per benchmark, ``OUT/<benchmark>.json`` (the numbers and their provenance) and ``OUT/<benchmark>.samples.jsonl``
(one line per question: all k responses, extracted answers, 0/1 correctness) so every number can be audited.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from vppo import VERSION_KEYS
from vppo.errors import InputError
from vppo.evaluation.protocol import Sampling

SCHEMA = "vppo.eval/1"

_INT, _STR = {"type": "integer"}, {"type": "string"}
SAMPLING_KEYS = tuple(field.name for field in dataclasses.fields(Sampling))

#: The one contract of a result file: ``vppo eval`` validates what it writes, every reader what it reads.
#: Extra fields are allowed; these must be present.
RESULT_JSON_SCHEMA: dict = {
    "type": "object",
    "required": ["schema", "model", "method", "benchmark", "task", "metric", "k", "accuracy", "stderr",
                 "n_questions", "n_samples", "bad_rows", "bad_row_details", "backend", "versions", "sampling",
                 "seed", "limit", "checkpoint", "checkpoint_sha256", "data", "wall_time_s", "samples_file",
                 "created", "image_bounds"],
    "properties": {
        "schema": {"const": SCHEMA},
        "model": _STR, "method": _STR, "benchmark": _STR, "task": _STR, "metric": _STR,
        "k": {"type": "integer", "minimum": 1},
        "accuracy": {"type": "number", "minimum": 0, "maximum": 100},
        "stderr": {"type": "number", "minimum": 0},
        "n_questions": {"type": "integer", "minimum": 0}, "n_samples": {"type": "integer", "minimum": 0},
        "bad_rows": _INT, "bad_row_details": {"type": "array"},
        "backend": _STR,  # one of vppo.evaluation.registry.BACKENDS, checked in validate_result
        "versions": {"type": "object", "required": list(VERSION_KEYS)},
        "sampling": {"type": "object", "required": list(SAMPLING_KEYS)},
        "seed": _INT, "limit": {"type": ["integer", "null"]},
        "checkpoint": _STR, "checkpoint_sha256": _STR,
        "data": {"type": "object", "required": ["path", "sha256"]},
        "wall_time_s": {"type": "number", "minimum": 0}, "samples_file": _STR, "created": _STR,
        "image_bounds": {"type": "object", "required": ["resize", "processor"]},  # equal to the protocol's
    },
}


class ResultError(InputError, ValueError):
    """A result file is missing, unreadable or not of schema vppo.eval/1 (names the file and the field)."""


def field_errors(instance, schema: dict) -> list[str]:
    """'field ...: problem' strings for every JSON-schema violation (missing fields named one by one)."""
    import jsonschema

    problems = []
    for err in sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "required" and isinstance(err.instance, dict):
            for name in err.validator_value:
                if name not in err.instance:
                    problems.append(f"field '{where + '.' if where else ''}{name}': missing")
        else:
            problems.append(f"field '{where or '<root>'}': {err.message}")
    return list(dict.fromkeys(problems))  # jsonschema reports a 'required' failure once per missing name


def validate_result(result: dict, source: str = "<result>") -> dict:
    problems = field_errors(result, RESULT_JSON_SCHEMA)
    from vppo.evaluation.registry import BACKENDS

    # json.loads accepts NaN, and NaN passes every range check.
    problems += [f"field '{name}': not finite" for name in ("accuracy", "stderr")
                 if isinstance(result.get(name), (int, float)) and not math.isfinite(result[name])]
    if isinstance(result.get("backend"), str) and result["backend"] not in BACKENDS:
        problems.append(f"field 'backend': {result['backend']!r} is not one of {sorted(BACKENDS)}")
    from vppo.eval_images import protocol_image_bounds
    from vppo.model_families import DEFAULT_FAMILY, FAMILIES

    # results written before model families were recorded are Qwen2.5-VL's
    family = FAMILIES.get(result.get("model_family", DEFAULT_FAMILY.key))
    if family is None:
        problems.append(f"field 'model_family': {result['model_family']!r} is not one of {sorted(FAMILIES)}")
    elif isinstance(result.get("image_bounds"), dict) and result["image_bounds"] != protocol_image_bounds(
            family.processor_bounds):
        expected = protocol_image_bounds(family.processor_bounds)
        problems.append(f"field 'image_bounds': {result['image_bounds']} is not the {family.label} protocol's "
                        f"{expected} (a number made with other image sizes is not comparable)")
    if problems:
        raise ResultError(f"{source}: " + "; ".join(problems))
    return result


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):  # e.g. an evaluation data file: a list of rows
        raise ResultError(f"{path}: a JSON {type(data).__name__}, not a vppo.eval/1 result object")
    validate_result(data, str(path))
    from vppo.catalog import BENCHMARK_BY_KEY

    if data["benchmark"] != path.stem:
        raise ResultError(f"{path}: field 'benchmark' is {data['benchmark']!r} but the file name says {path.stem!r}")
    if data["benchmark"] not in BENCHMARK_BY_KEY:
        raise ResultError(f"{path}: field 'benchmark': unknown key {data['benchmark']!r}")
    return data


def read_results_dir(root: str | Path, keys: list[str] | None = None) -> dict[str, dict]:
    """``{benchmark: result}`` of a results directory; with ``keys``, every one of them must be there."""
    root = Path(root)
    if not root.is_dir():
        raise ResultError(f"{root}: no such results directory")
    if keys is None:
        keys = sorted(p.stem for p in root.glob("*.json") if not p.name.startswith("."))
    return {key: read_result(root / f"{key}.json") for key in keys}


def read_samples(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def check_against_samples(result: dict, root: str | Path) -> dict:
    """Recount ``result`` (read from ``root``) from its samples file; ResultError unless the questions, samples
    and avg@k it states are what the samples say (a result file is trusted only as far as its samples go)."""
    from vppo.evaluation.protocol import avg_at_k

    source = Path(root) / f"{result['benchmark']}.json"
    name = result["samples_file"]
    if Path(name).name != name:
        raise ResultError(f"{source}: field 'samples_file' {name!r} is not a file name next to the result")
    path = Path(root) / name
    try:
        correct = [[int(flag) for flag in row["correct"]] for row in read_samples(path)]
    except FileNotFoundError:
        raise ResultError(f"{path}: missing (the per-sample log of {source})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path}: not valid JSON lines ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"{path}: a line has no 0/1 list 'correct' ({exc!r})") from None
    recount = 100.0 * avg_at_k(correct)
    problems = [f"{field} {stated} but the samples give {found}" for field, stated, found in (
        ("n_questions", result["n_questions"], len(correct)),
        ("n_samples", result["n_samples"], sum(map(len, correct))),
        ("k", result["k"], sorted({len(c) for c in correct}) or "no samples"))
        if stated != found and not (field == "k" and [stated] == found)]
    if abs(recount - result["accuracy"]) > 1e-6:
        problems.append(f"accuracy {result['accuracy']} but the samples give {recount:.6g}")
    if problems:
        raise ResultError(f"{source}: disagrees with {path.name}: " + "; ".join(problems))
    return result
