"""What ``vppo eval`` may write in ``--out``, decided before it writes anything.

``--out`` holds one model's results: per benchmark ``<benchmark>.json`` and ``<benchmark>.samples.jsonl``
(:mod:`vppo.evaluation.results`), and the checkpoint-hash cache. A file there is ours when it is a result of
schema vppo.eval/1 (or a samples file in its line format, left when a run was killed between its two
renames); a result belongs to the (model, method) labels it records. :func:`claim_output` refuses, with one
line naming the file:

- a file at a path we would write that is not ours (a user's ``geo3k.json``) or is a symbolic link;
- our result for other labels at a path we would write, unless ``--overwrite``;
- our result for other labels anywhere else in ``--out``: the folder would mix two models' results, which
  ``vppo check`` and the tables read as one model's.

:class:`OutputClaim` creates the missing folders of ``--out`` only once the checks passed, and removes them
again when the run ends without a result (refused late, or failed), so a refused run leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from vppo.errors import OutputExistsError
from vppo.evaluation.results import SCHEMA, ResultError, read_result
from vppo.fileio import output_errors, require_writable

CHECKPOINT_HASH_CACHE = ".checkpoint_sha256.json"
#: the keys of one line of ``<benchmark>.samples.jsonl`` (vppo.evaluation.runner.build_result)
SAMPLE_LINE_KEYS = frozenset({"row_id", "answer", "responses", "extracted", "correct"})
#: the keys of the checkpoint-hash cache (vppo.modeling.checkpoint_sha256)
CACHE_KEYS = frozenset({"checkpoint", "files", "sha256"})


def _json_object(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return None


def _our_result(path: Path) -> dict | None:
    """The file's content if it is a vppo.eval/1 result (valid today or not), else None."""
    data = _json_object(path)
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _is_our_samples_file(path: Path) -> bool:
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return False
    return all(isinstance(line, dict) and set(line) == SAMPLE_LINE_KEYS for line in lines)


def _labels(result: dict) -> tuple:
    return result.get("model"), result.get("method")


def _describe(labels: tuple) -> str:
    return f"model {labels[0]!r} (method {labels[1]!r})"


def claim_output(out: Path, keys: list[str], labels: tuple[str, str], overwrite: bool) -> dict[str, dict | None]:
    """Check that ``vppo eval`` may write the results of ``keys`` for ``labels`` into ``out`` (see the module
    docstring); returns ``{key: our valid result already there, or None}`` for the reuse test. Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: exists and is not a folder; left alone (choose another --out)")
    require_writable(out, "--out")
    found: dict[str, dict | None] = {key: None for key in keys}
    if not out.is_dir():
        return found
    for key in keys:
        for path in (out / f"{key}.json", out / f"{key}.samples.jsonl"):
            if path.is_symlink():
                raise OutputExistsError(f"--out {path}: a symbolic link, not a result this command wrote; left alone "
                                        "(remove it or choose another --out)")
    for path in sorted(p for p in out.glob("*.json") if not p.name.startswith(".")):
        requested = path.stem in found
        result = _our_result(path)
        if result is None:
            if requested:
                raise OutputExistsError(f"--out {path}: not a vppo eval result; left alone (remove it or choose "
                                        "another --out)")
            continue  # someone else's file, which we do not touch
        if _labels(result) != tuple(labels):
            if not requested:
                raise OutputExistsError(f"--out {out}: holds results of {_describe(_labels(result))} ({path.name}); "
                                        f"adding those of {_describe(labels)} would mix two models in one folder: "
                                        "choose another --out")
            if not overwrite:
                raise OutputExistsError(f"--out {path}: a result of {_describe(_labels(result))}, not of "
                                        f"{_describe(labels)}; left alone (pass --overwrite to replace it, or choose "
                                        "another --out)")
        if requested:
            try:
                found[path.stem] = read_result(path)
            except ResultError:  # ours, from an older version or damaged: evaluated again
                pass
    for key in keys:
        samples = out / f"{key}.samples.jsonl"
        if samples.exists() and not (out / f"{key}.json").exists() and not _is_our_samples_file(samples):
            raise OutputExistsError(f"--out {samples}: not a vppo eval samples file; left alone (remove it or "
                                    "choose another --out)")
    cache = out / CHECKPOINT_HASH_CACHE
    if cache.is_symlink() or (cache.exists() and not (isinstance(_json_object(cache), dict)
                                                      and set(_json_object(cache)) == CACHE_KEYS)):
        raise OutputExistsError(f"--out {cache}: not the checkpoint-hash cache this command writes; left alone")
    return found


class OutputClaim:
    """The folders of ``--out`` that a run creates, and removes again if it ends without a result."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created: list[Path] = []  # ``out`` first, then each parent this run created

    def create(self) -> None:
        folder, missing = self.out, []
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        with output_errors(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        self.created = missing

    def release_if_unused(self) -> None:
        """Remove what :meth:`create` made when it holds nothing but the checkpoint-hash cache."""
        if not self.created or not self.out.is_dir():
            return
        cache = self.out / CHECKPOINT_HASH_CACHE
        if any(p != cache for p in self.out.iterdir()):
            return
        cache.unlink(missing_ok=True)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # filled meanwhile by someone else: theirs
                return
