"""The training set in its on-hub form (chamber111/VPPO_ViRL39K_train: parquet, columns images / problem / answer),
written offline and read through the very code path `prepare-data train --source hub` runs on the cluster."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from vppo.cli import main
from vppo.data.train_data import read_layout, synthetic_example, write_hub_fixture


def test_datasets_reads_the_hub_form_as_the_hub_stores_it(tmp_path):
    import datasets

    folder = write_hub_fixture(tmp_path / "hub", n_rows=3)
    loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.column_names == ["images", "problem", "answer"]
    assert isinstance(loaded.features["images"], datasets.List)
    assert isinstance(loaded.features["images"].feature, datasets.Image)
    assert isinstance(loaded[0]["images"][0], Image.Image)  # decoded from the parquet's {bytes, path} struct


def test_prepare_data_hub_source_converts_the_hub_form(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = write_hub_fixture(tmp_path / "hub", n_rows=4, seed=3)
    out = tmp_path / "train"
    assert main(["prepare-data", "train", "--source", "hub", "--out", str(out), "--option", f"repo={folder}"]) == 0
    rows = read_layout(out)
    assert [r["id"] for r in rows] == [f"row-{i:06d}" for i in range(4)]
    for i, row in enumerate(rows):
        expected_row, expected_image = synthetic_example(i, 3)
        assert (row["problem"], row["answer"]) == (expected_row["problem"], expected_row["answer"])
        with Image.open(out / row["images"][0]) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(expected_image))
    assert json.loads((out / "manifest.json").read_text())["source"] == str(folder)


def test_a_bad_hub_row_stops_prepare_data_with_one_line(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    datasets.Dataset.from_dict({"images": [[Image.new("RGB", (8, 8))], []], "problem": ["<image>Q", "<image>R"],
                                "answer": ["1", "2"]}, features=features).to_parquet(folder / "data" / "train.parquet")
    capsys.readouterr()
    code = main(["prepare-data", "train", "--source", "hub", "--out", str(tmp_path / "train"), "--option",
                 f"repo={folder}"])
    text = capsys.readouterr().err
    assert code == 2 and text.strip().splitlines()[-1] == \
        f"vppo prepare-data: {folder} row 1: field 'images' is missing or empty"
    assert not (tmp_path / "train").exists()
