"""Expected bad input, reported the same way by every command: ``vppo <command>: <what, where>`` and exit 2.

A stage raises :class:`InputError` (or one of its subclasses: the data, recipe, checkpoint, result, resume and
launch errors of each stage derive from it) for anything the user can fix: a missing or partial folder, a bad
row, a bad option, a run the data cannot fill. :func:`vppo.cli.main` (and ``launch_train.sh``'s entry point) turns
it into one line on stderr and exit status :data:`EXIT_BAD_INPUT`; no command catches or prints it itself, and
anything else is a bug and keeps its traceback (tests/test_errors.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: Exit status of every command for expected bad input (``vppo check`` uses 1 for a regression).
EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input the user can fix; the message names the file, row, field or option."""


class OptionError(InputError, ValueError):
    """A malformed or unknown value of a command-line option (a name, a KEY=VALUE pair)."""


class OutputExistsError(InputError, FileExistsError):
    """An output folder or file is already there and is not ours to replace."""


def report_bad_input(command: str, exc: BaseException) -> int:
    """Print the one-line report of ``exc`` for ``vppo <command>`` and return the exit status."""
    message = " ".join(str(exc).split("\n"))  # one line, even for messages listing several problems
    print(f"vppo {command}: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def require_dir(path: str | Path | None, flag: str) -> Path | None:
    """``path`` when it is an existing folder (or None when not given); otherwise InputError naming ``flag``."""
    if path is None:
        return None
    if not Path(path).is_dir():
        raise InputError(f"{flag} {path}: no such folder")
    return Path(path)


def _typed(key: str, value: Any, kind: type, flag: str) -> Any:
    if kind is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if value is not None and not isinstance(value, (dict, list)):
            return str(value)  # YAML typing turns an all-digit revision into an int
    raise InputError(f"{flag} {key}={value!r}: expected {kind.__name__}")


def keyword_options(function) -> dict[str, type]:
    """``{name: type}`` of ``function``'s keyword parameters with defaults, from their annotations
    (``int | None`` counts as int), so the options a source accepts are read off its signature."""
    import inspect

    types = {"int": int, "float": float, "str": str, "bool": bool}
    found = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.default is inspect.Parameter.empty or parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
            continue
        annotation = parameter.annotation if isinstance(parameter.annotation, str) else parameter.annotation.__name__
        found[name] = types[annotation.split("|")[0].strip()]
    return found


def check_options(options: dict[str, Any], allowed: dict[str, type], flag: str = "--option",
                  prefixes: dict[str, type] | None = None) -> dict[str, Any]:
    """``options`` with every value of the type ``allowed`` names; an unknown key or a mistyped value is an
    InputError naming it (options used to be ignored silently when misspelt). ``prefixes`` allow families of
    keys such as ``name_map_<benchmark>``."""
    checked = {}
    for key, value in options.items():
        kind = allowed.get(key) or next((k for p, k in (prefixes or {}).items() if key.startswith(p)), None)
        if kind is None:
            valid = sorted(allowed) + [f"{p}<...>" for p in sorted(prefixes or {})]
            raise InputError(f"{flag} {key}: unknown option; valid: {', '.join(valid) or 'none'}")
        checked[key] = _typed(key, value, kind, flag)
    return checked


def parse_key_values(pairs: list[str], flag: str) -> dict:
    """``["key=value", ...]`` from repeated ``flag`` options -> dict with YAML-typed values (3, 1e-6, true, text)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise OptionError(f"{flag} {pair!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    return out
