"""A training start reads its inputs once (vppo.training.startup): the base checkpoint's hash, the data's checksum,
image checks and sizes are cached in the work dir by file size and mtime, so a second start (another rank, a retry)
reads no weight or image again, and a changed file is read again."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
from PIL import Image

import vppo.data.train_data as train_data
import vppo.fileio as fileio
from vppo.training.recipes import load_recipe
from vppo.training.runner import TrainRequest, build_trainer, cpu_threads
from vppo.training.startup import check_inputs


@pytest.fixture
def reads(monkeypatch):
    """Counts of weight-file hashes, data checksums and image opens (the real functions still run)."""
    counts = Counter()

    def counting(name, function):
        def spy(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return spy

    monkeypatch.setattr(fileio, "file_sha256", counting("weights hashed", fileio.file_sha256))
    monkeypatch.setattr(train_data, "_sha256_dir", counting("data hashed", train_data._sha256_dir))
    monkeypatch.setattr(Image, "open", counting("images opened", Image.open))
    return counts


def _later(path, seconds=5):
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


def test_a_second_start_reads_no_input_again_and_a_changed_file_is_read_again(tiny_model_dir, tmp_path, reads):
    data = train_data.prepare_train_data("synthetic", tmp_path / "data", n_rows=4)
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    request = TrainRequest(model=model, data=data, recipe="smoke", method="grpo", work_dir=tmp_path / "work",
                           out=tmp_path / "out")
    recipe = load_recipe("smoke")
    reads.clear()  # preparing the data hashed it for its manifest
    with cpu_threads(recipe):
        first = build_trainer(request, recipe)
        assert reads["weights hashed"] >= 2 and reads["data hashed"] == 1 and reads["images opened"] >= 4
        reads.clear()
        second = build_trainer(request, recipe)
    assert reads == {}  # no weight hashed, no data checksum, no image opened
    assert second.data_info == first.data_info
    inputs = check_inputs(model, data, request.work_dir)
    image = sorted((data / "images").iterdir())[0]
    _later(image)  # touched: same bytes, newer mtime
    assert check_inputs(model, data, request.work_dir) == inputs
    assert reads["data hashed"] == 1 and reads["images opened"] >= 4 and reads["weights hashed"] == 0
    reads.clear()
    _later(model / "config.json")
    assert check_inputs(model, data, request.work_dir) == inputs
    assert reads["weights hashed"] >= 2 and reads["data hashed"] == 0 and reads["images opened"] == 0
    image.write_bytes(image.read_bytes() + b"\0")  # edited in place: refused as before
    with pytest.raises(train_data.TrainDataError, match="the data changed since it was prepared"):
        check_inputs(model, data, request.work_dir)
