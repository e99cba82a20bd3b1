"""Evaluation data: chamber111/VPPO-Eval imported into a local layout, and its verification.

The source is a LLaMA-Factory data folder (:mod:`vppo.data.llamafactory`): the hub download, a local copy of it,
or the offline fixtures, which :mod:`vppo.data.eval_fixtures` writes in that same layout so every source goes
through one importer. Layout of a prepared directory ``ROOT``::

    ROOT/<benchmark>.json           the source rows in source order, as stored, except ``images``, which name
                                    the local copies ("images/<benchmark>/..."); ``source_images`` keeps the
                                    references as stored. A row is keyed by its index in this list.
    ROOT/images/<benchmark>/...     the images (hard links to the source files where the file system allows)
    ROOT/manifest.json              {"source", "revision", "files": {key: source JSON}, "benchmarks": {key:
                                    {"rows", "bad_rows", "sha256", ...}}, "sha256"}

Every row is scored. A row whose image is missing or unreadable, or that has no question, stops the import
(and any later scan) with :class:`EvalDataError` naming the benchmark, the row index and the path: numbers from
such data would not be the paper's. A row with an empty answer is kept and counted wrong; it is reported as a
bad row. Real data must have the catalog's row counts (``expected_rows``).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from vppo.catalog import BENCHMARKS, Benchmark
from vppo.data import llamafactory
from vppo.errors import InputError, check_options
from vppo.fileio import file_sha256, publish_dir, write_json_atomic, write_text_atomic
from vppo.rollout import user_content

EVAL_REPO = "chamber111/VPPO-Eval"
MANIFEST = "manifest.json"
IMAGES = "images"


class EvalDataError(InputError, ValueError):
    """The evaluation data does not match what the protocol expects (one line: benchmark, row, field, path)."""


@dataclass(frozen=True)
class EvalRow:
    row_id: str  # the row's index in its benchmark file
    prompt: str  # exactly as stored, "<image>" placeholders included
    answer: str  # may be empty: such a row is scored, and always wrong
    images: list[str]  # absolute paths


@dataclass(frozen=True)
class BadRow:
    """A row that is scored but cannot be answered right (today: its answer is empty)."""

    benchmark: str
    row_id: str
    reason: str

    def as_dict(self) -> dict:
        return {"row_id": self.row_id, "reason": self.reason}


@dataclass
class BenchmarkScan:
    benchmark: str
    rows: list[EvalRow] = field(default_factory=list)  # every row, in order
    bad: list[BadRow] = field(default_factory=list)  # the rows of ``rows`` that can only be wrong


_USER_ROLES = ("user", "human")
_ASSISTANT_ROLES = ("assistant", "gpt")


def _turns(row: dict) -> list[tuple[str, str]]:
    turns = row.get("messages", row.get("conversations"))
    if not isinstance(turns, list):
        raise ValueError("row has neither 'messages' nor 'conversations' (a list of turns)")
    out = []
    for turn in turns:
        role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        text = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if not isinstance(role, str) or not isinstance(text, str):
            raise ValueError(f"turn {turn!r} lacks a string role ('role'/'from') or text ('content'/'value')")
        out.append((role, text))
    return out


def parse_sharegpt_row(row: dict) -> tuple[str, str]:
    """(prompt text exactly as stored, answer) of a ShareGPT row; raises ``ValueError`` naming the field.

    A missing assistant turn is an error; an assistant turn with empty text is an empty answer.
    """
    turns = _turns(row)
    prompts = [text for role, text in turns if role in _USER_ROLES]
    answers = [text for role, text in turns if role in _ASSISTANT_ROLES]
    if not prompts:
        raise ValueError("row has no user turn")
    if not answers:
        raise ValueError("row has no assistant turn (the answer)")
    return prompts[0], answers[-1].strip()


def image_problem(path: Path) -> str | None:
    """Why the image at ``path`` cannot be used (missing or unreadable), or ``None``."""
    if not path.is_file():
        return "missing image"
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # PIL raises many types for broken files
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def check_row(where: str, raw, resolve: Callable[[str], Path]) -> tuple[str, str, list[str], list[Path]]:
    """(prompt, answer, image references, image paths) of one stored row, or :class:`EvalDataError` naming
    ``where`` (benchmark, file, row index), the field and the path."""
    try:
        if not isinstance(raw, dict):
            raise ValueError(f"row is a {type(raw).__name__}, not an object")
        prompt, answer = parse_sharegpt_row(raw)
        references = raw.get("images") or []
        references = [references] if isinstance(references, str) else references
        if not isinstance(references, list) or not all(isinstance(r, str) and r for r in references):
            raise ValueError(f"field 'images' must be a list of paths, got {raw.get('images')!r}")
        user_content(prompt, len(references))  # placeholders and images agree (raises ValueError)
    except ValueError as exc:
        raise EvalDataError(f"{where}: {exc}") from None
    paths = [resolve(r) for r in references]
    for reference, path in zip(references, paths):
        problem = image_problem(path)
        if problem:
            raise EvalDataError(f"{where}: {problem} {reference!r} ({path})")
    return prompt, answer, references, paths


def benchmark_file(root: str | Path, key: str) -> Path:
    return Path(root) / f"{key}.json"


def load_raw_rows(root: str | Path, key: str) -> list[dict]:
    path = benchmark_file(root, key)
    if not path.is_file():
        raise EvalDataError(f"{path}: missing (benchmark {key!r}); prepare it with `vppo prepare-data eval`")
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc}); prepare the data again") from None
    if not isinstance(rows, list):
        raise EvalDataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    return rows


def scan_rows(root: str | Path, key: str, raw_rows: list) -> BenchmarkScan:
    """Every row of a prepared benchmark as :class:`EvalRow` (row id = index); empty answers also listed in
    ``bad``. A row that cannot be shown to the model raises :class:`EvalDataError` (nothing is dropped)."""
    root = Path(root).resolve()
    scan = BenchmarkScan(key)
    for index, raw in enumerate(raw_rows):
        where = f"{key} ({benchmark_file(root, key)}) row {index}"
        prompt, answer, _, paths = check_row(where, raw, lambda ref: root / ref)
        scan.rows.append(EvalRow(str(index), prompt, answer, [str(p) for p in paths]))
        if not answer:
            scan.bad.append(BadRow(key, str(index), "empty answer: scored, every response counted wrong"))
    return scan


def scan_benchmark(root: str | Path, key: str) -> BenchmarkScan:
    return scan_rows(root, key, load_raw_rows(root, key))


def _sha256_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(bytes.fromhex(file_sha256(path)))  # streamed: images can be large
    return digest.hexdigest()


def benchmark_sha256(root: str | Path, key: str) -> str:
    """Checksum of one benchmark's JSON and its image folder (the manifest's per-benchmark ``sha256``)."""
    root = Path(root).resolve()
    image_dir = root / IMAGES / key
    files = [benchmark_file(root, key)] + ([p for p in image_dir.rglob("*") if p.is_file()] if image_dir.is_dir() else [])
    return _sha256_files(files, root)


def data_checksum(root: str | Path, key: str) -> str:
    """The benchmark's checksum now; must equal the manifest's when there is one (fails loudly otherwise)."""
    value = benchmark_sha256(root, key)
    manifest = read_manifest(root)
    recorded = ((manifest or {}).get("benchmarks") or {}).get(key, {}).get("sha256")
    if recorded and recorded != value:
        raise EvalDataError(f"{root}/{key}.json (+ images/{key}): checksum {value[:12]} differs from manifest.json's "
                            f"{recorded[:12]}: the data changed since it was prepared; prepare it again")
    return value


def verify_eval_dir(root: str | Path, benchmarks: list[Benchmark] | None = None,
                    expected_rows: dict[str, int] | None = None) -> dict:
    """Manifest body for ``root``: per-benchmark row and bad-row counts and checksums.

    Raises :class:`EvalDataError` (one line) listing every benchmark whose row count differs from
    ``expected_rows`` (default: the catalog's counts) and for the first row that cannot be used.
    """
    root = Path(root).resolve()
    benchmarks = benchmarks or list(BENCHMARKS)
    expected = expected_rows or {b.key: b.expected_rows for b in benchmarks}
    body: dict[str, dict] = {}
    mismatches = []
    for bench in benchmarks:
        raw = load_raw_rows(root, bench.key)
        scan = scan_rows(root, bench.key, raw)
        if len(raw) != expected[bench.key]:
            mismatches.append(f"{benchmark_file(root, bench.key)}: {len(raw)} rows, expected {expected[bench.key]}")
        body[bench.key] = {"rows": len(raw), "bad_rows": len(scan.bad), "sha256": benchmark_sha256(root, bench.key),
                           "bad_row_details": [b.as_dict() for b in scan.bad]}
    if mismatches:
        raise EvalDataError("row counts differ from the protocol's: " + "; ".join(mismatches))
    combined = hashlib.sha256("".join(body[k]["sha256"] for k in sorted(body)).encode()).hexdigest()
    return {"benchmarks": body, "sha256": combined}


def read_manifest(root: str | Path) -> dict | None:
    """``manifest.json`` of a prepared folder, None when there is none (EvalDataError when damaged)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc}); prepare the data again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("benchmarks", {}), dict):
        raise EvalDataError(f"{path}: expected an object with a 'benchmarks' object; prepare the data again")
    return manifest


# ----------------------------------------------------------------------------------------------- import

def _place_image(source: Path, target: Path, where: str) -> None:
    """``target`` becomes ``source``'s content: a hard link where possible (no second copy of 1.5 GB of
    images), a copy otherwise. Two references to the same local name must be the same file."""
    if target.exists():
        if not filecmp.cmp(source, target, shallow=False):
            raise EvalDataError(f"{where}: {source} and an image already imported as {target} differ")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def import_benchmark(root: Path, json_path: Path, out: Path, key: str) -> int:
    """Rows of one LLaMA-Factory JSON into ``out/<key>.json`` and their images into ``out/images/<key>/``;
    returns the row count. Raises :class:`EvalDataError` at the first row that cannot be used."""
    label = f"{key} ({json_path.relative_to(root)})"
    try:
        raw_rows = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the reason names the byte offset
        raise EvalDataError(f"{label}: not valid JSON ({exc})") from None
    if not isinstance(raw_rows, list):
        raise EvalDataError(f"{label}: expected a JSON list of rows, got {type(raw_rows).__name__}")
    local_rows = []
    for index, raw in enumerate(raw_rows):
        where = f"{label} row {index}"
        _, _, references, paths = check_row(where, raw, lambda ref: llamafactory.resolve_image(root, ref))
        local = []
        for reference, path in zip(references, paths):
            try:
                name = llamafactory.local_image_name(reference)
            except ValueError as exc:
                raise EvalDataError(f"{where}: {exc}") from None
            rel = f"{IMAGES}/{key}/{name}"
            _place_image(path, out / rel, where)
            local.append(rel)
        local_rows.append({**raw, "images": local, "source_images": references})
    write_text_atomic(benchmark_file(out, key), json.dumps(local_rows, ensure_ascii=False) + "\n")
    return len(local_rows)


def import_llamafactory(source: str | Path, out: Path, benchmarks: list[Benchmark],
                        name_map: dict[str, str] | None = None) -> dict[str, str]:
    """Import a LLaMA-Factory data folder (the VPPO-Eval layout) into ``out``; returns {key: source file}."""
    try:
        root = llamafactory.find_root(source)
        files = llamafactory.locate(root, [b.key for b in benchmarks], name_map)
    except llamafactory.LayoutError as exc:
        raise EvalDataError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    for bench in benchmarks:
        import_benchmark(root, files[bench.key], out, bench.key)
    return {key: str(path.relative_to(root)) for key, path in files.items()}


def _download_hub(out: Path, repo: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download  # cluster only: no hub access on CPU machines

    try:
        path = Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision,
                                      local_dir=str(out / "_download")))
    except (OSError, ValueError) as exc:  # offline, unknown repo or revision, malformed id
        raise EvalDataError(f"evaluation data {repo!r}: cannot download from the hub ({exc})") from exc
    return path, revision or "main"


#: The options of ``vppo prepare-data eval`` and their types (``name_map_<key>`` besides).
EVAL_OPTIONS = {"n_rows": int, "seed": int, "plant_empty_answers": int, "multi_image_row": int, "repo": str, "revision": str, "benchmarks": str,
                "expected_rows": int, "family": str}


#: The options each source reads (a folder source: those of ``folder``); another source's option is refused, not
#: ignored: ``family=qwen3-vl`` on the fixtures once left Qwen2.5-VL pictures under a manifest naming Qwen3-VL.
SOURCE_OPTIONS = {
    "fixtures": {"n_rows", "seed", "plant_empty_answers", "multi_image_row", "benchmarks"},
    "mini": {"n_rows", "benchmarks", "family"},
    "hub": {"repo", "revision", "benchmarks", "expected_rows", "name_map_"},
    "folder": {"benchmarks", "expected_rows", "name_map_"},
}


def _check_source_options(source: str, options: dict) -> None:
    if source not in SOURCE_OPTIONS and not Path(source).is_dir():
        return  # not a source at all: that is the error to report (_prepare_eval_data_into)
    kind = source if source in SOURCE_OPTIONS else "folder"
    for key in options:
        if ("name_map_" if key.startswith("name_map_") else key) not in SOURCE_OPTIONS[kind]:
            used = ", ".join(sorted(k.replace("name_map_", "name_map_<key>") for k in SOURCE_OPTIONS[kind]))
            what = f"source {source!r}" if kind == source else f"a folder source ({source})"
            raise EvalDataError(f"--option {key}: not read by {what}; its options: {used}")


def prepare_eval_data(source: str, out: str | Path, **options) -> Path:
    """Prepare evaluation data into ``out`` (see module docstring); returns ``out``.

    ``source``: ``fixtures`` (written offline into ``out/_fixtures`` in the VPPO-Eval layout, then imported),
    ``hub`` (chamber111/VPPO-Eval downloaded into ``out/_download``, then imported) or a local folder in that
    layout (the folder holding ``data/``, or ``data/`` itself).
    Options: ``n_rows`` (fixtures, default 5), ``seed`` (fixtures, 0), ``plant_empty_answers`` (fixtures: one
    more row per benchmark whose answer is empty), ``multi_image_row`` (fixtures: one more row per benchmark
    with that many images; 0, the default: none), ``repo`` (hub, chamber111/VPPO-Eval), ``revision`` (hub),
    ``benchmarks`` ("paper", the default: the paper's eight; "all"; or keys), ``name_map_<key>`` (LLaMA-Factory name of a benchmark's file),
    ``expected_rows`` (rows per benchmark for a folder or hub source that is not the real set; default: the
    catalog's counts), ``family`` (mini: the model family whose merged vision token sets the grid's cell size;
    default Qwen2.5-VL). An option its source does not read (:data:`SOURCE_OPTIONS`) is an error.
    """
    options = check_options(options, EVAL_OPTIONS, prefixes={"name_map_": str})
    _check_source_options(source, options)
    if options.get("n_rows", 1) < 1:
        raise EvalDataError(f"--option n_rows={options['n_rows']}: must be at least 1")
    with publish_dir(out) as tmp:
        _prepare_eval_data_into(source, tmp, **options)
    return Path(out)


def _prepare_eval_data_into(source: str, out: Path, **options) -> Path:
    from vppo.catalog import resolve_benchmarks
    from vppo.data.eval_fixtures import write_llamafactory_fixtures

    out = Path(out)
    try:
        benchmarks = resolve_benchmarks(str(options.get("benchmarks", "paper")))
    except ValueError as exc:
        raise EvalDataError(f"--option benchmarks: {exc}") from None
    name_map = {k[len("name_map_"):]: str(v) for k, v in options.items() if k.startswith("name_map_")}
    unknown = sorted(set(name_map) - set(llamafactory.DATASET_NAMES))
    if unknown:
        raise EvalDataError(f"name_map_{unknown[0]}: {unknown[0]!r} is not a benchmark key "
                            f"({', '.join(llamafactory.DATASET_NAMES)})")
    revision = None
    expected = {b.key: int(options["expected_rows"]) for b in benchmarks} if "expected_rows" in options else None
    if source == "fixtures":
        n_rows, planted = int(options.get("n_rows", 5)), bool(int(options.get("plant_empty_answers", 0)))
        multi = int(options.get("multi_image_row", 0))
        folder = write_llamafactory_fixtures(out / "_fixtures", n_rows, int(options.get("seed", 0)), benchmarks,
                                             planted, multi)
        expected = {b.key: n_rows + int(planted) + int(multi > 0) for b in benchmarks}
    elif source == "mini":
        from vppo.data.mini_task import EVAL_SETS, write_llamafactory_mini

        others = [b.key for b in benchmarks if b.key not in EVAL_SETS]
        if others:
            raise EvalDataError(f"eval data source 'mini': writes {', '.join(EVAL_SETS)} only, not {', '.join(others)} "
                                "(set --option benchmarks=...)")
        from vppo.data.mini_task import cell_size_of

        try:
            cell = cell_size_of(options.get("family"))
        except ValueError as exc:
            raise EvalDataError(f"--option family: {exc}") from None
        n_rows = int(options.get("n_rows", 5))
        folder = write_llamafactory_mini(out / "_mini", n_rows, [b.key for b in benchmarks], cell)
        expected = {b.key: n_rows for b in benchmarks}
    elif source == "hub":
        # str(): options are YAML-typed, and an all-digit commit prefix would arrive as an int
        requested = options.get("revision")
        folder, revision = _download_hub(out, str(options.get("repo", EVAL_REPO)),
                                         None if requested is None else str(requested))
    elif Path(source).is_dir():
        folder = Path(source)
    else:
        raise EvalDataError(f"eval data source {source!r}: expected 'fixtures', 'mini', 'hub' or an existing directory")
    files = import_llamafactory(folder, out, benchmarks, name_map)
    body = verify_eval_dir(out, benchmarks, expected)
    # the family only where asked for: a Qwen2.5-VL manifest stays the committed study's
    named = {"family": options["family"]} if "family" in options else {}
    manifest = {"source": source, "revision": revision, **named, "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **body}
    write_json_atomic(out / MANIFEST, manifest)  # written last: its presence means the data is complete
    for key, info in body["benchmarks"].items():
        if info["bad_rows"]:
            print(f"[eval data] {key}: {info['bad_rows']} row(s) scored as wrong: "
                  + "; ".join(f"row {b['row_id']}: {b['reason']}" for b in info["bad_row_details"][:5]))
    return out


def write_fixtures(out: str | Path, n_rows: int = 5, seed: int = 0, benchmarks: list[Benchmark] | None = None,
                   plant_empty_answer: bool = False) -> Path:
    """Prepared fixture data in ``out``: :func:`prepare_eval_data` with source ``fixtures``."""
    keys = ",".join(b.key for b in benchmarks) if benchmarks else "paper"
    return prepare_eval_data("fixtures", out, n_rows=n_rows, seed=seed, benchmarks=keys,
                             plant_empty_answers=int(plant_empty_answer))
