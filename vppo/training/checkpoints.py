"""What the trainer leaves on disk: TRL ``checkpoint-N`` folders and final model directories.

A ``checkpoint-N`` folder is complete when the Trainer wrote ``trainer_state.json`` (it is written last, after
weights, optimizer and RNG states) and the weights in one of the formats below are present. Weight formats:

- ``hf``: ``config.json`` + ``*.safetensors`` (index and every shard) or ``pytorch_model*.bin``;
- ``deepspeed``: a ``latest`` tag file naming a ``global_stepN/`` folder with ``*model_states.pt``;
- ``fsdp_sharded``: ``pytorch_model_fsdp_0/`` holding a torch distributed checkpoint (``.metadata`` + ``*.distcp``).
"""

from __future__ import annotations

import re
from pathlib import Path

from vppo.modeling import CheckpointError, hf_weights_missing

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _deepspeed_missing(path: Path) -> list[str] | None:
    latest = path / "latest"
    if not latest.is_file() and not list(path.glob("global_step*")):
        return None
    if not latest.is_file():
        return ["latest"]
    tag = latest.read_text().strip()
    folder = path / tag
    if not folder.is_dir():
        return [f"{tag}/ (named by {latest})"]
    return [] if list(folder.glob("*model_states.pt")) else [f"{tag}/*model_states.pt"]


def _fsdp_missing(path: Path) -> list[str] | None:
    folders = sorted(path.glob("pytorch_model_fsdp_*"))
    if not folders:
        return None
    folder = folders[0]
    missing = [] if (folder / ".metadata").is_file() else [f"{folder.name}/.metadata"]
    return missing + ([] if list(folder.glob("*.distcp")) else [f"{folder.name}/*.distcp"])


FORMATS = {"hf": hf_weights_missing, "deepspeed": _deepspeed_missing, "fsdp_sharded": _fsdp_missing}


def weights_format(path: str | Path) -> str:
    """The weight format stored in ``path``; :class:`CheckpointError` naming what is missing if partial."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    found = {name: check(path) for name, check in FORMATS.items()}
    present = {name: missing for name, missing in found.items() if missing is not None}
    if not present:
        raise CheckpointError(f"checkpoint {path}: no model weights found (expected *.safetensors, a DeepSpeed "
                              "'latest' + global_step*/ or an FSDP pytorch_model_fsdp_0/)")
    for name, missing in present.items():
        if not missing:
            return name
    name, missing = next(iter(present.items()))
    raise CheckpointError(f"checkpoint {path}: incomplete {name} weights, missing {', '.join(missing)}")


def is_complete_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    if not (path / TRAINER_STATE).is_file():
        return False
    try:
        weights_format(path)
    except CheckpointError:
        return False
    return True


def checkpoints(work_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-N`` folder in ``work_dir``, by step."""
    work_dir = Path(work_dir)
    found = []
    for child in work_dir.iterdir() if work_dir.is_dir() else []:
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def last_complete_checkpoint(work_dir: str | Path) -> Path | None:
    """The latest complete checkpoint (a partial one, from a kill during saving, is skipped)."""
    for _, path in reversed(checkpoints(work_dir)):
        if is_complete_checkpoint(path):
            return path
    return None
