"""The input checks of a training start, done once per job and remembered across attempts.

Every start proves its inputs before the model loads: the base checkpoint's sha256 (the run's identity,
:func:`vppo.modeling.checkpoint_sha256`), the training data's checksum against its manifest, every image opened
and verified, and every image's size (prompt lengths are counted from it). On the paper's scale that is tens of
GB read per start, and every rank of a job used to read it again (32 x 67 GB for 32B).

Now the main process checks first and the other ranks wait for it (:func:`once_per_job`); its results are cached
in the work dir, keyed by every file's name, size and modification time, so the other ranks and the next attempt
(a retry after preemption or a time limit) only ``stat`` the files. A file edited since (another size or mtime)
is checked again. The caches live in the work dir, which only training writes.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MODEL_CACHE = ".model_sha256.json"  # vppo.modeling.checkpoint_sha256's cache of the base checkpoint's hash
DATA_CACHE = ".data_check.json"


@dataclass(frozen=True)
class CheckedInputs:
    """What a training start knows about its inputs once they are proven."""

    model_sha256: str
    data_sha256: str
    image_sizes: dict[str, tuple[int, int]]  # resolved image path -> (width, height)


def file_stamps(root: Path, files: list[Path]) -> list[list]:
    """[relative name, size, mtime in ns] of ``files``: what a cached check is valid for."""
    return [[path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns]
            for path in files for stat in [path.stat()]]


def _cached(cache: Path, key: dict) -> dict | None:
    try:
        recorded = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in key.items()) else None


def checked_data(data_dir: Path, cache: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """(the data's checksum, verified against its manifest; every image's size), read from ``cache`` when no
    file of the layout changed since it was written, else computed (every image opened) and cached."""
    from vppo.data.train_data import layout_files, read_layout, verified_checksum
    from vppo.fileio import write_json_atomic

    root = Path(data_dir).resolve()
    key = {"data": str(root), "files": file_stamps(root, layout_files(root))}
    recorded = _cached(cache, key)
    if recorded is not None:
        return recorded["sha256"], {path: tuple(size) for path, size in recorded["image_sizes"].items()}
    sha256 = verified_checksum(root)
    sizes = {}
    for row in read_layout(root):  # opens and verifies every image; an error names its row
        for rel in row["images"]:
            path = str((root / rel).resolve())
            with Image.open(path) as image:
                sizes[path] = image.size
    write_json_atomic(cache, {**key, "sha256": sha256, "image_sizes": sizes})
    return sha256, sizes


def check_inputs(model: Path, data: Path, work_dir: Path) -> CheckedInputs:
    """The base checkpoint's hash and the data's checksum and image sizes, cached in ``work_dir``."""
    from vppo.modeling import checkpoint_sha256

    model_sha256 = checkpoint_sha256(model, cache=work_dir / MODEL_CACHE)
    data_sha256, sizes = checked_data(data, work_dir / DATA_CACHE)
    return CheckedInputs(model_sha256, data_sha256, sizes)


@contextmanager
def once_per_job(args):
    """The main process runs the block first while the other ranks wait; then they run it, finding its caches.
    ``args``: the run's TrainingArguments (their process group is set up)."""
    with args.main_process_first(local=False, desc="the input checks"):
        yield
