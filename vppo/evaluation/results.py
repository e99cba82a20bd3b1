"""The result files of ``vppo eval`` (schema "vppo.eval/1"): building, validating, reading, writing.

Per benchmark, ``OUT/<benchmark>.json`` (the numbers and their provenance) and ``OUT/<benchmark>.samples.jsonl``
(one line per question: all k responses, extracted answers, 0/1 correctness) so every number can be audited.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

SCHEMA = "vppo.eval/1"

#: key -> accepted types of the result JSON (extra keys are allowed; these must be present).
REQUIRED: dict[str, tuple[type, ...]] = {
    "schema": (str,), "model": (str,), "method": (str,), "benchmark": (str,), "task": (str,), "metric": (str,),
    "k": (int,), "accuracy": (float, int), "stderr": (float, int), "n_questions": (int,), "n_samples": (int,),
    "bad_rows": (int,), "bad_row_details": (list,), "backend": (str,), "versions": (dict,), "sampling": (dict,),
    "seed": (int,), "limit": (int, type(None)), "checkpoint": (str,), "checkpoint_sha256": (str,), "data": (dict,),
    "wall_time_s": (float, int), "samples_file": (str,), "created": (str,),
}
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "n")
VERSION_KEYS = ("vppo", "torch", "transformers", "lmms_eval", "vllm", "python")


class ResultError(ValueError):
    """A result file is missing, unreadable or not of schema vppo.eval/1 (names the file and the field)."""


def validate_result(result: dict, source: str = "<result>") -> dict:
    problems = [f"field {k!r} missing" for k in REQUIRED if k not in result]
    problems += [f"field {k!r} is {type(result[k]).__name__}, expected {'/'.join(t.__name__ for t in types)}"
                 for k, types in REQUIRED.items() if k in result and not isinstance(result[k], types)]
    if result.get("schema") not in (None, SCHEMA):
        problems.append(f"field 'schema' is {result['schema']!r}, expected {SCHEMA!r}")
    if isinstance(result.get("sampling"), dict):
        problems += [f"field 'sampling.{k}' missing" for k in SAMPLING_KEYS if k not in result["sampling"]]
    if isinstance(result.get("versions"), dict):
        problems += [f"field 'versions.{k}' missing" for k in VERSION_KEYS if k not in result["versions"]]
    if problems:
        raise ResultError(f"{source}: " + "; ".join(problems))
    return result


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path}: not valid JSON ({exc})") from None
    return validate_result(data, str(path))


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


def package_versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    import vppo

    return {"vppo": vppo.__version__, "torch": version("torch"), "transformers": version("transformers"),
            "lmms_eval": version("lmms_eval"), "vllm": version("vllm"), "python": platform.python_version()}


