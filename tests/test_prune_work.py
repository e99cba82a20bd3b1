"""`vppo prune-work`: a published run keeps only its last complete checkpoint; nothing else is removed."""

from __future__ import annotations

import json

from vppo.cli import main
from vppo.training.prune import stale_checkpoints


def _checkpoint(work, step, complete=True):
    folder = work / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_keeps_the_last_complete_checkpoint_and_foreign_files(tmp_path, capsys):
    work = tmp_path / "work"
    for step in (2, 4, 10):
        _checkpoint(work, step)
    _checkpoint(work, 12, complete=False)  # killed while saving: not the one to keep, and not needed
    (work / "notes.txt").write_text("mine")
    (work / "checkpoint-old-backup").mkdir()
    assert [p.name for p in stale_checkpoints(work)] == ["checkpoint-2", "checkpoint-4", "checkpoint-12"]
    assert main(["prune-work", str(work)]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-10", "checkpoint-old-backup", "notes.txt"]
    assert "removed 3 checkpoint(s)" in capsys.readouterr().out


def test_nothing_removed_without_a_complete_checkpoint(tmp_path):
    work = tmp_path / "work"
    _checkpoint(work, 2, complete=False)
    assert main(["prune-work", str(work)]) == 0 and (work / "checkpoint-2").is_dir()


def test_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["prune-work", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"vppo prune-work: {tmp_path / 'nope'}: no such folder"
