"""Writing result files so that a reader never sees half a file, and hashing what a result was made from.

Every stage writes its outputs here: a temporary file in the same folder, then an atomic rename, so a killed
job leaves either the old file or the new one (and Snakemake or a resume check never mistakes a partial
file for a finished one). What is published gets the permissions the umask gives (whatever the writer used,
e.g. safetensors' 0600), a folder that cannot take files is refused before the work starts
(:func:`require_writable`), and a full disk or a read-only file system is one line naming the path
(:class:`OutputWriteError`), not a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from vppo.errors import InputError, OutputExistsError

#: errno values that mean "this place cannot take our output" (the user's to fix), not a bug
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class OutputWriteError(InputError, OSError):
    """An output cannot be written (disk full, quota, read-only file system, no permission); names the path."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unwritable_reason(exc: BaseException) -> str | None:
    """The strerror of an OSError that means the output's place cannot take it (disk full, read-only, ...);
    writers that wrap their OSError (safetensors' SafetensorError says 'No space left on device (os error 28)')
    are recognised by that text. None for anything else."""
    if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
        return os.strerror(exc.errno)
    return next((os.strerror(code) for code in _UNWRITABLE if f"(os error {code})" in str(exc)), None)


@contextmanager
def output_errors(where: str | Path) -> Iterator[None]:
    """Turn a full disk / read-only file system / permission error while writing ``where`` into one line."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        reason = unwritable_reason(exc)
        if reason is None:
            raise
        raise OutputWriteError(f"{where}: cannot write there ({reason}); nothing was replaced") from None


def require_writable(path: str | Path, flag: str) -> None:
    """OutputWriteError unless files can be created where ``path`` will be (its nearest existing folder), so
    a run fails before its work, not when publishing. Tried by creating a file: permission bits do not stop
    root, and a read-only mount stops everyone."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputWriteError(f"{flag} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".vppo-write-test-")
    except OSError as exc:
        raise OutputWriteError(f"{flag} {path}: cannot create files in {folder} ({os.strerror(exc.errno or 0)})") from None
    os.close(fd)
    os.unlink(probe)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    with output_errors(path):
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


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _is_stale_partial(folder: Path, out: Path) -> bool:
    """A temporary folder of :func:`publish_dir` for ``out`` whose builder on this host is gone (a killed run:
    nothing else removes it). Its name says who builds it: ``.<out>.partial-<host>-<pid>-<random>``."""
    host, _, pid = folder.name[len(_partial_prefix(out)):].rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # not ours, or another machine's run, whose process cannot be looked up from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but not ours to signal
        return False
    return False


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the temporary folders a killed :func:`publish_dir` left next to ``out`` (a 7B conversion leaves
    ~15 GB); folders not named by us, or whose builder still runs, are left alone."""
    stale = [p for p in out.parent.glob(_partial_prefix(out) + "*")
             if p.is_dir() and not p.is_symlink() and _is_stale_partial(p, out)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


@contextmanager
def publish_dir(out: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it becomes ``out`` only when the block completes.

    Nothing already at ``out`` is deleted or replaced, except an empty folder (OutputExistsError otherwise,
    checked again atomically by the rename); the folder and its files get the permissions the umask gives
    (not mkdtemp's 0700 or a writer's 0600). On any error the temporary folder is removed; one left by a killed
    run is removed by the next. A full disk or read-only place is an :class:`OutputWriteError`.
    """
    out = Path(out)
    refuse_existing_output(out)
    with output_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{socket.gethostname()}-{os.getpid()}-",
                                    dir=out.parent))
    try:
        with output_errors(out):
            os.chmod(tmp, 0o777 & ~_current_umask())
            yield tmp
            replace_if_absent_or_empty(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_umask(root: Path) -> None:
    """Give ``root``'s folders and files the permissions the umask gives new ones (a writer such as
    safetensors creates 0600 whatever the umask). Files with other links (hard-linked source images) are
    someone else's too and keep their mode."""
    mask = _current_umask()
    for folder, _, names in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                wanted = (0o777 if info.st_mode & 0o111 else 0o666) & ~mask
                if stat.S_IMODE(info.st_mode) != wanted:
                    os.chmod(path, wanted)


def refuse_existing_output(out: Path) -> None:
    """OutputExistsError unless ``out`` is absent or an empty folder (a command never deletes what it did not make)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()) or (out.is_dir() and any(out.iterdir())):
        raise OutputExistsError(f"{out}: exists and is not empty (or not a folder); it is left alone (remove it "
                                "or choose another output)")


def replace_if_absent_or_empty(src: Path, out: Path) -> None:
    """Rename folder ``src`` to ``out`` with the umask's permissions; rename(2) replaces only an empty folder,
    so a folder someone filled meanwhile is never lost (OutputExistsError)."""
    apply_umask(src)
    try:
        os.replace(src, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputExistsError(f"{out}: appeared meanwhile and is not an empty folder; left alone") from exc
        raise
