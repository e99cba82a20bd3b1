"""Writing result files so that a reader never sees half a file, and hashing what a result was made from.

Every stage writes its outputs here: a temporary file in the same folder, then an atomic rename, so a killed
job leaves either the old file or the new one (and Snakemake or a resume check never mistakes a partial
file for a finished one).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from vppo.errors import OutputExistsError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Sorted keys, indent 2; NaN/inf are refused (they are not JSON)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def publish_dir(out: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it becomes ``out`` only when the block completes.

    Nothing already at ``out`` is deleted or replaced, except an empty folder (OutputExistsError otherwise,
    checked again atomically by the rename); the folder gets the permissions the umask gives a new folder
    (not mkdtemp's 0700). On any error the temporary folder is removed.
    """
    out = Path(out)
    refuse_existing_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_current_umask())
        yield tmp
        replace_if_absent_or_empty(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_existing_output(out: Path) -> None:
    """OutputExistsError unless ``out`` is absent or an empty folder (a command never deletes what it did not make)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()) or (out.is_dir() and any(out.iterdir())):
        raise OutputExistsError(f"{out}: exists and is not empty (or not a folder); it is left alone (remove it "
                                "or choose another output)")


def replace_if_absent_or_empty(src: Path, out: Path) -> None:
    """Rename folder ``src`` to ``out``; rename(2) replaces only an empty folder, so a folder someone filled
    meanwhile is never lost (OutputExistsError)."""
    try:
        os.replace(src, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputExistsError(f"{out}: appeared meanwhile and is not an empty folder; left alone") from exc
        raise
