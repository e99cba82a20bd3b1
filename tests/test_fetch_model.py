"""`vppo fetch-model`: base and released checkpoints land complete or not at all."""

from __future__ import annotations

import json
import shutil

import pytest

from vppo.data.models import fetch_model
from vppo.errors import InputError
from vppo.modeling import CheckpointError, verify_checkpoint_dir


def test_tiny_source_builds_the_offline_model(tmp_path):
    out = fetch_model("tiny", tmp_path / "models" / "base")
    assert verify_checkpoint_dir(out) == out


def test_tiny_warm_source_builds_the_warm_started_model(tmp_path, monkeypatch):
    from vppo.data import tiny_models

    monkeypatch.setattr(tiny_models, "WARM_START_STEPS", 2)  # the fit itself: tests/test_tiny_warm.py
    out = fetch_model("tiny-warm", tmp_path / "warm")
    assert verify_checkpoint_dir(out) == out
    assert json.loads((out / "vppo_tiny.json").read_text())["warm_start"]["steps"] == 2
    plain = fetch_model("tiny", tmp_path / "plain")
    assert "warm_start" not in json.loads((plain / "vppo_tiny.json").read_text())


def test_local_directory_is_copied_and_verified(tmp_path, tiny_model_dir):
    out = fetch_model(str(tiny_model_dir), tmp_path / "copy")
    assert (out / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_partial_checkpoint_is_refused_and_leaves_nothing_behind(tmp_path, tiny_model_dir):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing \*\.safetensors"):
        fetch_model(str(partial), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_existing_output_is_never_overwritten(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("finished work")
    with pytest.raises(FileExistsError, match="already exists"):
        fetch_model(str(tiny_model_dir), out)
    assert (out / "keep.txt").read_text() == "finished work"


def test_a_file_is_not_a_model_source(tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"0")
    with pytest.raises(InputError, match="weights.bin: is a file"):
        fetch_model(str(source), tmp_path / "out")
