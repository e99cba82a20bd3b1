"""``--config`` values typed by the workflow's config schema (torch-free: the Snakefile imports it).

Snakemake types a top-level ``--config key=value`` itself, but parses a nested value (``--config
'eval={samples: 4}'``) with YAML's base loader, which gives strings only: ``'4'`` would then fail the schema's
``type: integer`` with a message that hides how to fix it. :func:`coerce_by_schema` gives each string the type
the schema declares for its key (integer, number, boolean, null) and raises one line naming the key when the
text is none of them. A key whose schema admits strings keeps its text.
"""

from __future__ import annotations

from typing import Any

import yaml

from vppo.errors import InputError

_CHECKS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class ConfigValueError(InputError, ValueError):
    """A ``--config`` value is not of the type the schema gives its key (names the key)."""


def _resolve(node: dict, root: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node if isinstance(node, dict) else {}


def _child(node: dict, key: str, root: dict) -> dict:
    properties = node.get("properties") or {}
    if key in properties:
        return _resolve(properties[key], root)
    extra = node.get("additionalProperties")
    return _resolve(extra, root) if isinstance(extra, dict) else {}


def _typed(value: str, node: dict, where: str) -> Any:
    declared = node.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or [])
    if not types and "enum" in node:
        types = sorted({type_name for type_name, check in _CHECKS.items() for v in node["enum"] if check(v)}
                       | ({"string"} if any(isinstance(v, str) for v in node["enum"]) else set()))
    if not types or "string" in types:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if any(_CHECKS[t](parsed) for t in types if t in _CHECKS):
        return parsed
    raise ConfigValueError(f"--config {where}={value!r}: expected {' or '.join(types)}")


def coerce_by_schema(values: Any, schema: dict, root: dict | None = None, where: str = "") -> Any:
    """``values`` (the ``--config`` overrides, nested dicts and lists) with every string typed as ``schema``
    declares it for that key; ConfigValueError names the dotted key of a value that cannot be."""
    root = schema if root is None else root
    node = _resolve(schema, root)
    if isinstance(values, dict):
        return {key: coerce_by_schema(value, _child(node, str(key), root), root, f"{where}.{key}" if where else str(key))
                for key, value in values.items()}
    if isinstance(values, list):
        items = _resolve(node.get("items") or {}, root)
        return [coerce_by_schema(value, items, root, f"{where}[{i}]") for i, value in enumerate(values)]
    if isinstance(values, str) and node:
        return _typed(values, node, where)
    return values
