"""Evaluation data in the local layout of chamber111/VPPO-Eval, and its verification.

Layout of a prepared directory ``ROOT``::

    ROOT/<benchmark>.json           a JSON list of ShareGPT rows {"id", "images": ["images/<benchmark>/<file>"],
                                    "conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": ANSWER}]}
    ROOT/images/<benchmark>/...     the images, paths in rows are relative to ROOT
    ROOT/manifest.json              {"source", "revision", "benchmarks": {key: {"rows", "bad_rows", "sha256"}}, "sha256"}

``prepare_eval_data(source, out, **kw)`` with source ``"fixtures"`` (deterministic PIL drawings, offline),
``"hub"`` (``huggingface_hub.snapshot_download`` of chamber111/VPPO-Eval; cluster only) or a local directory
holding such JSON files. Row counts are checked against ``vppo.catalog`` (``expected_rows``) for real data and
a mismatch raises :class:`EvalDataError`. Bad rows (missing or unreadable image, empty answer, malformed row)
never stop a run and are never dropped silently: :func:`scan_benchmark` returns them with their reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from vppo.errors import InputError, check_options
from vppo.catalog import BENCHMARK_BY_KEY, BENCHMARKS, Benchmark
from vppo.evaluation.protocol import parse_sharegpt_row
from vppo.fileio import file_sha256, publish_dir, write_json_atomic, write_text_atomic
from vppo.rollout import REASONING_INSTRUCTION

EVAL_REPO = "chamber111/VPPO-Eval"
MANIFEST = "manifest.json"


class EvalDataError(InputError, ValueError):
    """The evaluation data directory does not match what the protocol expects (names the file and field)."""


@dataclass(frozen=True)
class EvalRow:
    row_id: str
    prompt: str  # exactly as stored, "<image>" placeholders included
    answer: str
    images: list[str]  # absolute paths


@dataclass(frozen=True)
class BadRow:
    benchmark: str
    row_id: str
    reason: str

    def as_dict(self) -> dict:
        return {"row_id": self.row_id, "reason": self.reason}


@dataclass
class BenchmarkScan:
    benchmark: str
    rows: list[EvalRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


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


def _check_image(path: Path) -> str | None:
    """Reason the image cannot be used, or ``None``."""
    if not path.is_file():
        return f"missing image file {path}"
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # PIL raises many types for broken files
        return f"unreadable image {path}: {type(exc).__name__}: {exc}"
    return None


def scan_rows(root: str | Path, key: str, raw_rows: list[dict]) -> BenchmarkScan:
    """Split raw rows into usable :class:`EvalRow` and :class:`BadRow` (pure apart from reading images)."""
    root = Path(root).resolve()
    scan = BenchmarkScan(key)
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rows):
        row_id = str(raw["id"]) if isinstance(raw, dict) and raw.get("id") is not None else str(index)
        if row_id in seen:  # rows are matched by id downstream (lmms-eval docs, samples files)
            scan.bad.append(BadRow(key, f"{row_id}@{index}", f"duplicate id {row_id!r} (first at row {seen[row_id]})"))
            continue
        seen[row_id] = index
        try:
            if not isinstance(raw, dict):
                raise ValueError(f"row is a {type(raw).__name__}, not an object")
            prompt, answer = parse_sharegpt_row(raw)
            images = raw.get("images") or []
            if isinstance(images, str):
                images = [images]
            paths = [root / p for p in images]
        except (ValueError, TypeError) as exc:  # TypeError: an image entry that is not a path (null, a number)
            scan.bad.append(BadRow(key, row_id, f"malformed row: {exc}"))
            continue
        if not answer:
            scan.bad.append(BadRow(key, row_id, "empty answer"))
            continue
        reasons = [r for r in (_check_image(p) for p in paths) if r]
        if reasons:
            scan.bad.append(BadRow(key, row_id, "; ".join(reasons)))
            continue
        scan.rows.append(EvalRow(row_id, prompt, answer, [str(p) for p in paths]))
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
    image_dir = root / "images" / key
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

    Raises :class:`EvalDataError` listing every benchmark whose row count differs from ``expected_rows``
    (default: the catalog's counts, i.e. PROTOCOL.md section 5).
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
        raise EvalDataError("evaluation data row counts do not match the protocol:\n  " + "\n  ".join(mismatches))
    combined = hashlib.sha256("".join(body[k]["sha256"] for k in sorted(body)).encode()).hexdigest()
    return {"benchmarks": body, "sha256": combined}


def read_manifest(root: str | Path) -> dict | None:
    path = Path(root) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------- fixtures

def _fixture_question(kind: str, rng: random.Random) -> tuple[str, str, list[tuple[str, str]]]:
    """(question, answer, labels to draw) of one fixture row of the given answer kind."""
    if kind == "number":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"The rectangle has sides {a} and {b}. What is its area?", str(a * b), [(str(a), "w"), (str(b), "h")]
    if kind == "expression":
        p, q = rng.randint(1, 5), rng.randint(6, 9)
        return (f"A segment of length {p} is cut from a segment of length {q}. Express the ratio of the pieces "
                f"as a fraction.", f"\\frac{{{p}}}{{{q - p}}}", [(f"{p}", "w"), (f"{q}", "h")])
    options = [rng.randint(10, 99) for _ in range(4)]
    correct = rng.randrange(4)
    letters = "ABCD"
    choices = "\n".join(f"{letters[i]}. {v}" for i, v in enumerate(options))
    return (f"Which value is written in the box?\nChoices:\n{choices}", letters[correct],
            [(str(options[correct]), "w")])


def _draw_fixture_image(labels: list[tuple[str, str]], size: tuple[int, int], rng: random.Random) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle([w // 8, h // 8, 7 * w // 8, 7 * h // 8], outline=(rng.randint(0, 200), 0, 0), width=2)
    for i, (text, _) in enumerate(labels):
        draw.text((w // 4, h // 4 + i * max(h // 6, 8)), text, fill=(0, 0, 0))
    return img


#: Image sizes cycled through the fixture rows: ordinary, too large (downscaled), too small (upscaled).
FIXTURE_SIZES = ((224, 168), (900, 880), (20, 24), (320, 240), (112, 300))


def write_fixtures(out: str | Path, n_rows: int = 5, seed: int = 0, benchmarks: list[Benchmark] | None = None,
                   plant_bad_rows: bool = False) -> Path:
    """Deterministic fixture set for every benchmark in the VPPO-Eval layout (``n_rows`` rows each).

    ``plant_bad_rows`` appends two bad rows per benchmark (a missing image, an empty answer) for tests.
    """
    out = Path(out)
    for bench in benchmarks or BENCHMARKS:
        rng = random.Random(f"{seed}-{bench.key}")
        (out / "images" / bench.key).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n_rows):
            question, answer, labels = _fixture_question(bench.answer_kind, rng)
            rel = f"images/{bench.key}/{i:04d}.png"
            _draw_fixture_image(labels, FIXTURE_SIZES[i % len(FIXTURE_SIZES)], rng).save(out / rel)
            rows.append(_sharegpt(f"{bench.key}-{i:04d}", rel, question, answer))
        if plant_bad_rows:
            rows.append(_sharegpt(f"{bench.key}-missing", f"images/{bench.key}/absent.png", "Question?", "1"))
            rows.append(_sharegpt(f"{bench.key}-noanswer", f"images/{bench.key}/0000.png", "Question?", "  "))
        write_text_atomic(benchmark_file(out, bench.key), json.dumps(rows, indent=1) + "\n")
    return out


def _sharegpt(row_id: str, image: str, question: str, answer: str) -> dict:
    return {"id": row_id, "images": [image], "conversations": [
        {"from": "human", "value": f"<image>{question}\n\n{REASONING_INSTRUCTION}"},
        {"from": "gpt", "value": answer}]}


# ----------------------------------------------------------------------------------------------- sources

def _import_directory(src: Path, out: Path, benchmarks: list[Benchmark], name_map: dict[str, str]) -> None:
    """Bring ``src`` (a VPPO-Eval checkout: JSONs + images) into ``out``'s layout."""
    json_files = {p.stem.lower(): p for p in src.rglob("*.json") if p.name != MANIFEST}
    out.mkdir(parents=True, exist_ok=True)
    for bench in benchmarks:
        candidates = [name_map.get(bench.key, ""), bench.key, bench.paper_name.lower().replace("-", ""),
                      bench.paper_name.lower()]
        found = next((json_files[c.lower()] for c in candidates if c and c.lower() in json_files), None)
        if found is None:
            raise EvalDataError(f"{src}: no JSON file for benchmark {bench.key!r} (tried {candidates}); "
                                f"pass name_map_{bench.key}=<file stem>")
        rows = json.loads(found.read_text())
        # Image paths are relative to the JSON's folder in the source: link that folder's images/ into out.
        images_src = found.parent / "images"
        if images_src.is_dir() and not (out / "images").exists():
            (out / "images").symlink_to(images_src.resolve(), target_is_directory=True)
        write_text_atomic(benchmark_file(out, bench.key), json.dumps(rows) + "\n")


def _download_hub(out: Path, repo: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download  # cluster only: no hub access on CPU machines

    try:
        path = Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision,
                                      local_dir=str(out / "_download")))
    except (OSError, ValueError) as exc:  # offline, unknown repo or revision, malformed id
        raise EvalDataError(f"evaluation data {repo!r}: cannot download from the hub ({exc})") from exc
    return path, revision or "main"


#: The options of ``vppo prepare-data eval`` and their types (``name_map_<key>`` besides).
EVAL_OPTIONS = {"n_rows": int, "seed": int, "plant_bad_rows": int, "repo": str, "revision": str, "benchmarks": str}


def prepare_eval_data(source: str, out: str | Path, **options) -> Path:
    """Prepare evaluation data into ``out`` (see module docstring); returns ``out``.

    Options: ``n_rows`` (fixtures, default 5), ``seed`` (fixtures, 0), ``plant_bad_rows`` (fixtures, 0),
    ``repo`` (hub, chamber111/VPPO-Eval), ``revision`` (hub), ``benchmarks`` ("all" or keys),
    ``name_map_<key>`` (source file stem for a benchmark). Built in a temporary sibling folder that becomes
    ``out`` only when complete: a failed run leaves nothing half-prepared, and nothing already at ``out``
    is overwritten.
    """
    options = check_options(options, EVAL_OPTIONS, prefixes={"name_map_": str})
    if options.get("n_rows", 1) < 1:
        raise EvalDataError(f"--option n_rows={options['n_rows']}: must be at least 1")
    with publish_dir(out) as tmp:
        _prepare_eval_data_into(source, tmp, **options)
    return Path(out)


def _prepare_eval_data_into(source: str, out: Path, **options) -> Path:
    from vppo.catalog import resolve_benchmarks

    out = Path(out)
    try:
        benchmarks = resolve_benchmarks(str(options.get("benchmarks", "all")))
    except ValueError as exc:
        raise EvalDataError(f"--option benchmarks: {exc}") from None
    name_map = {k[len("name_map_"):]: str(v) for k, v in options.items() if k.startswith("name_map_")}
    revision = None
    if source == "fixtures":
        n_rows = int(options.get("n_rows", 5))
        write_fixtures(out, n_rows, int(options.get("seed", 0)), benchmarks, bool(int(options.get("plant_bad_rows", 0))))
        expected = {b.key: n_rows + (2 if int(options.get("plant_bad_rows", 0)) else 0) for b in benchmarks}
    elif source == "hub":
        # str(): options are YAML-typed, and an all-digit commit prefix would arrive as an int
        requested = options.get("revision")
        downloaded, revision = _download_hub(out, str(options.get("repo", EVAL_REPO)),
                                             None if requested is None else str(requested))
        _import_directory(downloaded, out, benchmarks, name_map)
        expected = None
    elif Path(source).is_dir():
        _import_directory(Path(source), out, benchmarks, name_map)
        expected = None
    else:
        raise EvalDataError(f"eval data source {source!r}: expected 'fixtures', 'hub' or an existing directory")
    body = verify_eval_dir(out, benchmarks, expected)
    manifest = {"source": source, "revision": revision, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **body}
    write_json_atomic(out / MANIFEST, manifest)  # written last: its presence means the data is complete
    for key, info in body["benchmarks"].items():
        if info["bad_rows"]:
            print(f"[eval data] {key}: {info['bad_rows']} bad row(s): "
                  + "; ".join(f"{b['row_id']}: {b['reason']}" for b in info["bad_row_details"][:5]))
    return out
