"""The LLaMA-Factory ``data/`` folder that chamber111/VPPO-Eval ships, found and read as PAPO-Eval reads it.

Layout (ROOT is the folder above ``data/``: PAPO-Eval runs from there)::

    ROOT/data/dataset_info.json      optional: {name: {"file_name": "vppo/<name>.json", ...}, ...}
    ROOT/data/vppo/<name>.json       one JSON list per benchmark, rows {"messages": [...], "images": [...]}
    ROOT/data/images/<name>/...      the images, referenced from rows as "./data/images/<name>/<file>"

``<name>`` is the LLaMA-Factory dataset name (``--dataset`` of PAPO-Eval's ``run_infer.py``). Our benchmark keys
map to those names through :data:`DATASET_NAMES`, explicitly; a benchmark whose file is not found stops the
import and names the files that no benchmark claimed, so a renamed file is one ``name_map_<key>=<name>`` away.

An image reference resolves as LLaMA-Factory's converter resolves it: first inside ``data/`` (its media_dir),
else relative to ROOT (PAPO-Eval's working directory, which is what ``./data/images/...`` assumes).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from vppo.catalog import BENCHMARKS
from vppo.errors import InputError

DATA_DIR = "data"
JSON_DIR = "vppo"
DATASET_INFO = "dataset_info.json"

#: Benchmark key -> LLaMA-Factory dataset name in the evaluation data folder (``Benchmark.source_name`` of the
#: study registry, where the choice of each name is explained).
DATASET_NAMES: dict[str, str] = {b.key: b.source_name for b in BENCHMARKS}


class LayoutError(InputError, ValueError):
    """The folder is not a LLaMA-Factory data folder, or a benchmark's file cannot be found in it."""


def find_root(source: str | Path) -> Path:
    """ROOT for ``source``: the folder holding ``data/``, or ``data/`` itself (then its parent)."""
    source = Path(source).resolve()
    if (source / DATA_DIR).is_dir():
        return source
    if source.name == DATA_DIR and ((source / JSON_DIR).is_dir() or (source / DATASET_INFO).is_file()):
        return source.parent
    raise LayoutError(f"{source}: not a LLaMA-Factory data folder (expected {source}/{DATA_DIR}/{JSON_DIR}/<name>.json)")


def dataset_files(root: Path) -> dict[str, Path]:
    """LLaMA-Factory name -> JSON file: every ``data/vppo/*.json`` by stem, then ``dataset_info.json``'s
    local entries (they win: that file is what LLaMA-Factory itself reads)."""
    data = root / DATA_DIR
    files = {p.stem: p for p in sorted((data / JSON_DIR).glob("*.json"))}
    info_path = data / DATASET_INFO
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LayoutError(f"{info_path}: not valid JSON ({exc})") from None
        for name, entry in info.items() if isinstance(info, dict) else ():
            file_name = entry.get("file_name") if isinstance(entry, dict) else None
            if isinstance(file_name, str) and (data / file_name).is_file():
                files[name] = data / file_name
    return files


def locate(root: Path, keys: list[str], overrides: dict[str, str] | None = None) -> dict[str, Path]:
    """Benchmark key -> its JSON file under ``root``; raises :class:`LayoutError` naming what is missing."""
    names = {**DATASET_NAMES, **(overrides or {})}
    files = dataset_files(root)
    found = {key: files[names[key]] for key in keys if names[key] in files}
    missing = [key for key in keys if key not in found]
    if missing:
        claimed = {names[k] for k in DATASET_NAMES}
        unclaimed = sorted(str(p.relative_to(root)) for name, p in files.items() if name not in claimed)
        wanted = ", ".join(f"{key} ({names[key]})" for key in missing)
        raise LayoutError(f"{root}/{DATA_DIR}: no file for {wanted}; files no benchmark claims: "
                          f"{', '.join(unclaimed) or 'none'}; map one with --option name_map_<key>=<name>")
    return found


def resolve_image(root: Path, reference: str) -> Path:
    """The file a row's image reference names (``data/`` first, then ROOT); the ROOT-relative path if neither
    exists (where ``./data/images/...`` points), so the caller's error names the place that was meant."""
    candidates = [root / DATA_DIR / reference, root / reference]
    return next((c for c in candidates if c.is_file()), candidates[-1])


def local_image_name(reference: str) -> PurePosixPath:
    """Where a referenced image goes under ``images/<benchmark>/`` locally: the reference without ``./`` and
    ``data/images/`` (``./data/images/X/1.png`` -> ``X/1.png``). Raises ``ValueError`` for a reference that
    is absolute or climbs out of the folder."""
    path = PurePosixPath(reference.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"image reference {reference!r} is absolute or leaves the data folder")
    parts = [p for p in path.parts if p != "."]
    for prefix in (["data", "images"], ["images"], ["data"]):
        if parts[:len(prefix)] == prefix and len(parts) > len(prefix):
            parts = parts[len(prefix):]
            break
    return PurePosixPath(*parts)
