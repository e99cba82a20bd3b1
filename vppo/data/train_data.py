"""Training data in the local layout: ``train.jsonl`` + ``images/`` + ``manifest.json``.

Layout (contract): one row per line ``{"id", "problem", "answer", "images": ["images/<file>", ...]}``; the
problem holds one ``<image>`` placeholder per image; ``manifest.json`` holds ``{rows, sha256, source}``. Images
keep the source's bytes (format and mode: palette, 1-bit, alpha, ...): converting them at import would change
what the one training resize (:mod:`vppo.training.images`) sees.

Sources (:data:`SOURCES`):
- ``synthetic``: counting questions on generated pictures ("how many red squares?"), answerable only by
  looking at the image; deterministic (same seed -> byte-identical files).
- ``hub``: the paper's set (``chamber111/VPPO_ViRL39K_train``) through ``datasets.load_dataset``; option
  ``repo`` may also name a local folder in the hub's form, which :func:`write_hub_fixture` writes offline
  (parquet under ``data/``, columns images / problem / answer), so tests run this very code path.
- a local directory already in the layout: validated (every row, every image) and copied.

:func:`load_train_dataset` turns a layout directory into the ``datasets.Dataset`` TRL's GRPOTrainer consumes
(conversational ``prompt`` = problem + blank line + the reasoning instruction, images in place, ``images``,
``answer``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from vppo.errors import InputError, OutputExistsError, check_options, keyword_options
from vppo.fileio import publish_dir, write_json_atomic
from vppo.rollout import IMAGE_PLACEHOLDER, REASONING_INSTRUCTION, user_content

HUB_REPO = "chamber111/VPPO_ViRL39K_train"
ROWS_FILE, IMAGES_DIR, MANIFEST_FILE = "train.jsonl", "images", "manifest.json"


class TrainDataError(InputError, ValueError):
    """A training row or image is unusable; the message names the file, row and field."""


# ------------------------------------------------------------------ synthetic counting pictures

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


def synthetic_example(index: int, seed: int, size: int = 56) -> tuple[dict, Image.Image]:
    """One counting question and its picture, a pure function of (index, seed).

    The picture holds 1-4 squares of the asked colour among 0-3 distractors of another colour, so the
    answer cannot be guessed from the text.
    """
    rng = np.random.default_rng([seed, index])
    colour, other = rng.choice(sorted(COLOURS), size=2, replace=False)
    n_target, n_other = int(rng.integers(1, 5)), int(rng.integers(0, 4))
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = size // 4  # a 4x4 grid of cells, each square in its own cell so squares never overlap
    cells = rng.permutation(16)[: n_target + n_other]
    for k, c in enumerate(cells):
        x, y = int(c % 4) * cell, int(c // 4) * cell
        fill = COLOURS[colour if k < n_target else other]
        draw.rectangle([x + 2, y + 2, x + cell - 3, y + cell - 3], fill=fill)
    row = {"id": f"synthetic-{seed}-{index:05d}",
           "problem": f"{IMAGE_PLACEHOLDER}How many {colour} squares are in the picture?",
           "answer": str(n_target)}
    return row, image


# ------------------------------------------------------------------ hub rows (pure conversion)

@dataclass(frozen=True)
class ImageFile:
    """An image file's bytes as the source stores them, written unchanged into the layout: the training resize
    then opens the image in its own mode (palette, 1-bit, alpha, ...), as the official loader does."""

    data: bytes
    suffix: str  # the file name's extension, from the format PIL reads (".png", ".jpg", ...)


#: File extensions of the formats PIL names (others: the format's name in lower case).
_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif", "MPO": ".jpg"}
#: Modes a PNG holds losslessly: a decoded image in another mode (CMYK, YCbCr, ...) is kept as TIFF.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def _image_file(data: bytes, where: str) -> ImageFile:
    """``data`` checked readable, with the extension of its format."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            fmt = img.format or "PNG"
    except Exception as exc:  # PIL raises several types for corrupt data
        raise TrainDataError(f"{where}: field 'images': unreadable image ({exc})") from exc
    return ImageFile(bytes(data), _SUFFIXES.get(fmt, "." + fmt.lower()))


def _image_from_hub(value: Any, where: str) -> Image.Image | ImageFile:
    """What ``datasets`` gives for an image cell ({"bytes","path"} dict undecoded, bytes, or a PIL image), its
    mode and bytes kept: the file's own bytes where the cell holds them, else the decoded image as it is."""
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, dict) and value.get("bytes"):
        return _image_file(value["bytes"], where)
    if isinstance(value, dict) and value.get("path"):
        try:
            data = Path(value["path"]).read_bytes()
        except OSError as exc:
            raise TrainDataError(f"{where}: field 'images': unreadable image ({exc})") from exc
        return _image_file(data, where)
    if isinstance(value, (bytes, bytearray)):
        return _image_file(bytes(value), where)
    raise TrainDataError(f"{where}: field 'images': missing or unsupported image value {type(value).__name__}")


def record_from_hub_row(row: dict, index: int, source: str = HUB_REPO) -> tuple[dict, list[Image.Image | ImageFile]]:
    """Convert one hub row {problem, answer, images} to (layout row without image paths, its images as stored)."""
    where = f"{source} row {index}"
    problem, answer = row.get("problem"), row.get("answer")
    if not isinstance(problem, str) or not problem.strip():
        raise TrainDataError(f"{where}: field 'problem' is missing or empty")
    if answer is None or not str(answer).strip():
        raise TrainDataError(f"{where}: field 'answer' is missing or empty")
    raw_images = row.get("images")
    if raw_images is None or (isinstance(raw_images, list) and not raw_images):
        raise TrainDataError(f"{where}: field 'images' is missing or empty")
    raw_images = raw_images if isinstance(raw_images, list) else [raw_images]
    images = [_image_from_hub(v, where) for v in raw_images]
    n_placeholders = problem.count(IMAGE_PLACEHOLDER)
    if n_placeholders == 0:  # ViRL39K convention: images precede the question
        problem = IMAGE_PLACEHOLDER * len(images) + problem
    elif n_placeholders != len(images):
        raise TrainDataError(f"{where}: field 'problem' has {n_placeholders} {IMAGE_PLACEHOLDER} but "
                             f"{len(images)} images")
    return {"id": str(row.get("id", f"row-{index:06d}")), "problem": problem, "answer": str(answer).strip()}, images


# ------------------------------------------------------------------ writing and validating the layout

def layout_files(root: Path) -> list[Path]:
    """The layout's own files, sorted: the rows and the images folder. What a workflow adds beside them
    (Snakemake's ``.snakemake_timestamp`` in a directory output) is not the data."""
    return sorted(p for p in [root / ROWS_FILE, *(root / IMAGES_DIR).rglob("*")] if p.is_file())


def _sha256_dir(root: Path) -> str:
    """Checksum of the :func:`layout_files`."""
    digest = hashlib.sha256()
    for path in layout_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def image_file_stem(row_id: str) -> str:
    """A file name made from a row id: the id itself when it is a plain name; otherwise its safe characters
    plus a hash of the whole id, so no id can name a path outside ``images/`` and distinct ids stay distinct."""
    if _PLAIN_NAME.fullmatch(row_id):
        return row_id
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id).strip("._-")[:60]
    return f"{cleaned or 'row'}-{hashlib.sha256(row_id.encode()).hexdigest()[:12]}"


def _write_image(image: Image.Image | ImageFile, root: Path, stem: str) -> str:
    """Write one image under ``root`` as ``stem`` + extension, in its own mode; returns the relative path.

    A source file's bytes are written unchanged; a PIL image as PNG (no timestamps: byte-stable), or TIFF for a
    mode PNG cannot hold. Never converted: the training resize must see the mode the official loader sees."""
    if isinstance(image, ImageFile):
        (root / (stem + image.suffix)).write_bytes(image.data)
        return stem + image.suffix
    if image.mode in _PNG_MODES:
        image.save(root / (stem + ".png"), format="PNG", optimize=False)
        return stem + ".png"
    image.save(root / (stem + ".tif"), format="TIFF")
    return stem + ".tif"


def write_layout(examples: Iterable[tuple[dict, list[Image.Image | ImageFile]]], out: str | Path,
                 source: str) -> Path:
    """Write rows + images (each in its own mode, see :func:`_write_image`) + manifest into ``out`` atomically
    (temp dir, then rename)."""
    out = Path(out)
    if (out / MANIFEST_FILE).is_file():
        raise OutputExistsError(f"{out}: training data already prepared (manifest.json exists); remove it first")
    with publish_dir(out) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        lines = []
        first_row: dict[str, int] = {}  # image file stem -> row number that used it
        for number, (row, images) in enumerate(examples, start=1):
            stem = image_file_stem(str(row["id"]))
            if stem in first_row:
                raise TrainDataError(f"{source} row {number}: field 'id' {row['id']!r} repeats row "
                                     f"{first_row[stem]}'s (their images would share files)")
            first_row[stem] = number
            paths = []
            for k, image in enumerate(images):
                paths.append(_write_image(image, tmp, f"{IMAGES_DIR}/{stem}-{k}"))
            lines.append(json.dumps({**row, "images": paths}, sort_keys=True, ensure_ascii=False))
        (tmp / ROWS_FILE).write_text("\n".join(lines) + "\n")
        manifest = {"rows": len(lines), "sha256": _sha256_dir(tmp), "source": source}
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return out


def read_manifest(data_dir: str | Path) -> dict:
    """``manifest.json`` of a prepared layout directory (TrainDataError, one line, when missing or damaged)."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise TrainDataError(f"{path}: missing (prepare the data with `vppo prepare-data train`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainDataError(f"{path}: not valid JSON ({exc}); prepare the data again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise TrainDataError(f"{path}: field 'sha256' is missing; prepare the data again")
    return manifest


def verified_checksum(data_dir: str | Path) -> str:
    """The layout's checksum computed now; TrainDataError unless it is the manifest's. Rows or images edited
    after preparing must neither resume a run trained on the old data nor be recorded under its checksum."""
    recorded = read_manifest(data_dir)["sha256"]
    value = _sha256_dir(Path(data_dir))
    if value != recorded:
        raise TrainDataError(f"{data_dir}: checksum {value[:12]} differs from {MANIFEST_FILE}'s {recorded[:12]}: the "
                             "data changed since it was prepared; prepare it again (into a new folder)")
    return value


def read_layout(data_dir: str | Path, verify_images: bool = True) -> list[dict]:
    """Validated rows of a layout directory; images are opened (and closed) to prove they are readable, unless
    ``verify_images`` is False (a training start whose check of the same unchanged files is cached)."""
    data_dir = Path(data_dir)
    rows_path = data_dir / ROWS_FILE
    if not rows_path.is_file():
        raise TrainDataError(f"{rows_path}: missing (not a training data directory)")
    rows = []
    for line_no, raw in enumerate(rows_path.read_bytes().splitlines(), start=1):
        where = f"{rows_path} line {line_no}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrainDataError(f"{where}: not UTF-8 text ({exc})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainDataError(f"{where}: not JSON ({exc})") from exc
        for field in ("id", "problem", "answer", "images"):
            if field not in row or row[field] in (None, "", []):
                raise TrainDataError(f"{where}: field {field!r} is missing or empty")
        if row["problem"].count(IMAGE_PLACEHOLDER) not in (0, len(row["images"])):
            raise TrainDataError(f"{where}: field 'problem' has {row['problem'].count(IMAGE_PLACEHOLDER)} "
                                 f"{IMAGE_PLACEHOLDER} but {len(row['images'])} images")
        for rel in row["images"]:
            path = data_dir / rel
            if not path.is_file():
                raise TrainDataError(f"{where}: field 'images': file {path} does not exist")
            if not verify_images:
                continue
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as exc:
                raise TrainDataError(f"{where}: field 'images': file {path} is not a readable image ({exc})") from exc
        rows.append(row)
    if not rows:
        raise TrainDataError(f"{rows_path}: no rows")
    return rows


# ------------------------------------------------------------------ sources

def _synthetic(out: Path, n_rows: int = 64, seed: int = 0) -> Path:
    if n_rows < 1:
        raise TrainDataError(f"--option n_rows={n_rows}: must be at least 1")
    return write_layout((( r, [im]) for r, im in (synthetic_example(i, seed) for i in range(int(n_rows)))),
                        out, source=f"synthetic(seed={seed},n_rows={n_rows})")


def _mini(out: Path, n_rows: int = 512, split: str = "train", kinds: str = "all", family: str | None = None) -> Path:
    """The mini study's grid questions (:mod:`vppo.data.mini_task`); ``kinds``: "all" or comma-separated;
    ``family``: the model family whose merged vision token sets the cell size (default Qwen2.5-VL's 28 px)."""
    from vppo.data import mini_task

    chosen = mini_task.KINDS if kinds == "all" else tuple(k.strip() for k in str(kinds).split(","))
    unknown = sorted(set(chosen) - set(mini_task.KINDS)) + ([split] if split not in mini_task.SPLIT_SEEDS else [])
    if unknown or n_rows < 1:
        raise TrainDataError(f"--option kinds/split/n_rows: {unknown or n_rows} (kinds: {', '.join(mini_task.KINDS)}; "
                             f"splits: {', '.join(mini_task.SPLIT_SEEDS)}; n_rows >= 1)")
    try:
        cell = mini_task.cell_size_of(family)
    except ValueError as exc:
        raise TrainDataError(f"--option family: {exc}") from None
    examples = (mini_task.mini_example(split, i, chosen, cell) for i in range(int(n_rows)))
    named = f",family={family}" if family else ""  # unnamed: the manifest of the committed Qwen2.5-VL study
    return write_layout((({k: e[k] for k in ("id", "problem", "answer")}, [e["image"]]) for e in examples), out,
                        source=f"mini(split={split},kinds={','.join(chosen)},n_rows={n_rows}{named})")


def _hub(out: Path, repo: str = HUB_REPO, split: str = "train", n_rows: int | None = None) -> Path:
    import datasets  # cluster path: needs the hub (HF_HUB_OFFLINE must be unset)

    try:
        dataset = datasets.load_dataset(repo, split=split)
    except OSError as exc:  # offline, unknown repo or split, network: the hub's errors are all OSErrors
        raise TrainDataError(f"training data {repo!r} (split {split!r}): cannot load from the hub ({exc})") from exc
    return convert_dataset(undecoded_images(dataset), out, source=repo, n_rows=n_rows)


def undecoded_images(dataset):
    """``dataset`` whose ``images`` cells are the stored files ({bytes, path}), not decoded pictures."""
    import datasets

    feature = dataset.features.get("images")
    if isinstance(feature, datasets.Image):
        return dataset.cast_column("images", datasets.Image(decode=False))
    if isinstance(getattr(feature, "feature", None), datasets.Image):
        return dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return dataset


def write_hub_fixture(folder: str | Path, n_rows: int = 8, seed: int = 0) -> Path:
    """The synthetic counting rows in the training set's on-hub form, offline: ``data/train-00000-of-00001.parquet``
    written by ``datasets`` as ``push_to_hub`` stores it (``images``: a list of ``datasets.Image``, parquet structs
    {bytes, path} that ``datasets`` decodes to PIL images; ``problem``, ``answer``: strings) and a dataset card
    naming those features; ``datasets.load_dataset(folder, split="train")`` reads it as it reads the hub."""
    import datasets

    folder = Path(folder)
    columns: dict[str, list] = {"images": [], "problem": [], "answer": []}
    for index in range(int(n_rows)):
        row, image = synthetic_example(index, seed)
        columns["images"].append([image])
        columns["problem"].append(row["problem"])
        columns["answer"].append(row["answer"])
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: images\n    sequence: image\n  - name: problem\n"
        "    dtype: string\n  - name: answer\n    dtype: string\n  splits:\n  - name: train\n"
        f"    num_examples: {int(n_rows)}\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/train-*\n---\nOffline fixture in the form of chamber111/VPPO_ViRL39K_train.\n")
    return folder


def convert_dataset(dataset, out: str | Path, source: str, n_rows: int | None = None) -> Path:
    """Write any iterable of hub-style rows (e.g. a ``datasets.Dataset``) into the layout."""
    limit = len(dataset) if n_rows is None else min(int(n_rows), len(dataset))
    examples = (record_from_hub_row(dataset[i], i, source) for i in range(limit))
    return write_layout(examples, out, source=source)


def _local(src: Path, out: Path) -> Path:
    rows = read_layout(src)
    examples = []
    for row in rows:
        images = [ImageFile((src / rel).read_bytes(), Path(rel).suffix) for rel in row["images"]]
        examples.append(({k: v for k, v in row.items() if k != "images"}, images))
    return write_layout(examples, out, source=str(src))


SOURCES: dict[str, Callable[..., Path]] = {"synthetic": _synthetic, "mini": _mini, "hub": _hub}


def prepare_train_data(source: str, out: str | Path, **options: Any) -> Path:
    """Build the layout in ``out`` from ``source`` ("synthetic" | "hub" | a local layout directory)."""
    out = Path(out)
    if source in SOURCES:
        return SOURCES[source](out, **check_options(options, keyword_options(SOURCES[source])))
    if Path(source).is_dir():
        return _local(Path(source), out, **check_options(options, keyword_options(_local)))
    raise TrainDataError(f"training data source {source!r}: not one of {sorted(SOURCES)} nor a directory")


# ------------------------------------------------------------------ what the trainer reads

def training_prompt(problem: str) -> str:
    """The user turn as the official template renders it (``math_format_perception.jinja``: ``{{ content | trim }}``,
    a blank line, the reasoning instruction); each ``<image>`` stays where it stands, so its image goes there."""
    return problem.strip() + "\n\n" + REASONING_INSTRUCTION


def load_train_dataset(data_dir: str | Path, verify_images: bool = True):
    """A ``datasets.Dataset`` for TRL: ``prompt`` (one user turn), ``images`` (PIL list), ``answer``, ``id``.

    The user turn's content is a list of parts, each image part where its ``<image>`` placeholder stands in
    :func:`training_prompt` (as the official prompt builder splits the rendered text at ``<image>``); TRL fills
    image parts in order and puts images first only for plain-string content. The ``images`` column stores
    file paths and decodes (to RGB) on access, so a 39K-row set does not sit in memory as pixels.
    """
    import datasets

    data_dir = Path(data_dir)
    rows = read_layout(data_dir, verify_images)
    columns: dict[str, list] = {"id": [], "prompt": [], "images": [], "answer": []}
    for row in rows:
        columns["id"].append(row["id"])
        content = user_content(training_prompt(row["problem"]), len(row["images"]))
        columns["prompt"].append([{"role": "user", "content": [{"text": None, **part} for part in content]}])
        columns["images"].append([str((data_dir / rel).resolve()) for rel in row["images"]])
        columns["answer"].append(str(row["answer"]))
    features = datasets.Features({
        "id": datasets.Value("string"),
        "prompt": [{"role": datasets.Value("string"),
                    "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": datasets.Sequence(datasets.Image(mode="RGB")),
        "answer": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict(columns, features=features)
