"""The mini study's task family, training source and model (issue 13, items 1-2).

The pictures must carry the answer (one cell = one merged vision token), the control split must not need
them, everything must be a pure function of (split, index), and the mini model must be the real Qwen2.5-VL
architecture with a tokenizer in which the task's words are single tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from vppo.data import mini_task
from vppo.data.mini_task import COLOURS, FACTS, GRID, KINDS, SIZE, mini_example, reference_response, token_roles
from vppo.data.train_data import read_layout
from vppo.model_families import FAMILIES


def _cells_from_pixels(image) -> list[str]:
    """The nine cell values read back from the picture's cell centres (what a perfect eye would see)."""
    pixels = np.array(image)
    by_rgb = {rgb: name for name, rgb in COLOURS.items()}
    cell = image.size[0] // GRID
    return [by_rgb[tuple(int(v) for v in pixels[(i // GRID) * cell + cell // 2, (i % GRID) * cell + cell // 2])]
            for i in range(GRID * GRID)]


@pytest.mark.parametrize("split", ["train", "heldout", "control"])
def test_answers_follow_from_the_picture(split):
    kinds = ("control",) if split == "control" else mini_task.IMAGE_KINDS
    for index in range(60):
        example = mini_example(split, index, kinds)
        cells = _cells_from_pixels(example["image"])
        assert cells == example["cells"]
        counts = Counter(cells)
        if example["kind"] == "majority":
            leader = max(mini_task.FILLED, key=lambda c: counts[c])
            assert example["answer"] == leader
            assert sorted(counts[c] for c in mini_task.FILLED)[-1] > sorted(counts[c] for c in mini_task.FILLED)[-2]
        elif example["kind"] == "filled":
            assert example["answer"] == str(sum(c != "white" for c in cells))
        else:  # control: the answer is in the words, whatever the picture
            thing = example["problem"].split("What colour is ")[1].rstrip("?")
            assert example["answer"] == FACTS[thing]


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_cells_are_whole_merged_tokens_that_no_processor_resamples(family):
    """Qwen2.5-VL keeps its 28 px one-token cells (the committed study's pictures); Qwen3-VL, whose evaluation
    protocol never sees less than 256x256 px, gets 96 px cells of 3x3 of its 32 px tokens. Either way the picture
    is a whole number of merged tokens per cell, passes the evaluation's resize unchanged, and carries the answer."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vppo.eval_images import prepare_image

    cell = mini_task.cell_size(family)
    assert cell == {"qwen2.5-vl": 28, "qwen3-vl": 96}[family.key] and cell % family.resize_factor == 0
    example = mini_example("heldout", 5, cell=cell)
    side = GRID * cell
    assert example["image"].size == (side, side) and prepare_image(example["image"]).size == (side, side)
    bounds = family.processor_bounds  # the evaluation protocol's: the processor keeps the picture's size
    processor = Qwen2VLImageProcessorPil(size={"shortest_edge": bounds.min_pixels, "longest_edge": bounds.max_pixels},
                                         patch_size=family.patch_size, merge_size=family.merge_size,
                                         temporal_patch_size=family.temporal_patch_size)
    patches = side // family.patch_size
    assert processor(images=[example["image"]], return_tensors="pt")["image_grid_thw"].tolist() == [[1, patches, patches]]
    assert _cells_from_pixels(example["image"]) == example["cells"]
    same = mini_example("heldout", 5)  # the cell size changes the scale only
    assert (same["cells"], same["answer"], same["problem"]) == (example["cells"], example["answer"], example["problem"])


def test_pure_function_of_split_and_index():
    a, b = mini_example("heldout", 7), mini_example("heldout", 7)
    assert a["image"].tobytes() == b["image"].tobytes() and a["problem"] == b["problem"]
    train_images = {mini_example("train", i)["image"].tobytes() for i in range(40)}
    heldout_images = {mini_example("heldout", i)["image"].tobytes() for i in range(40)}
    assert len(train_images & heldout_images) < 3  # different streams (a chance collision of 4^9 pictures is rare)


def test_every_cell_is_one_merged_vision_token(tiny_model_dir):
    from vppo.modeling import load_processor

    processor = load_processor(tiny_model_dir)
    out = processor.image_processor(images=[mini_example("train", 0)["image"]], return_tensors="pt")
    # 84 px / 14 px patches = 6x6 patches; the 2x2 merge gives 3x3 = 9 tokens, one per cell.
    assert out["image_grid_thw"].tolist() == [[1, 6, 6]]


def test_reference_response_and_token_roles():
    example = mini_example("train", 0, ("majority",))
    response = reference_response(example)
    assert response.startswith("<think> most cells </think> \\boxed{") and response.endswith(f"{{{example['answer']}}}")
    tokens = ["<think>", " red", " white", " bl", "ue", " </think>", " \\boxed{", "1", "2", "}"]
    assert token_roles(tokens) == ["format", "perception", "perception", "perception", "perception", "format",
                                   "format", "answer", "answer", "format"]
    assert token_roles(["<think>", " leaf", " </think>", " \\boxed{}"]) == ["format"] * 4  # no colour, empty box


def test_prepare_data_mini_source(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "vppo", "prepare-data", "train", "--source", "mini", "--out", str(out),
           "--option", "n_rows=9", "--option", "kinds=majority,control"]
    subprocess.run(cmd, check=True, capture_output=True)
    rows = read_layout(out)
    assert [r["id"] for r in rows] == [f"mini-train-{i:05d}" for i in range(9)]
    assert {mini_example("train", i, ("majority", "control"))["answer"] for i in range(9)} == {r["answer"] for r in rows}
    assert json.loads((out / "manifest.json").read_text())["rows"] == 9
    bad = subprocess.run([*cmd[:8], str(tmp_path / "bad"), "--option", "kinds=majority,colour_at"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "colour_at" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_prepare_data_mini_pictures_follow_the_family(tmp_path, capsys):
    """--option family: the training and evaluation sets draw the family's cells and name the family."""
    from PIL import Image

    from vppo.cli import main

    train = tmp_path / "train"
    assert main(["prepare-data", "train", "--source", "mini", "--out", str(train), "--option", "n_rows=2",
                 "--option", "family=qwen3-vl"]) == 0
    manifest = json.loads((train / "manifest.json").read_text())
    assert manifest["source"] == "mini(split=train,kinds=majority,filled,control,n_rows=2,family=qwen3-vl)"
    image = Image.open(train / read_layout(train)[0]["images"][0])
    assert image.size == (288, 288) and _cells_from_pixels(image) == mini_example("train", 0, KINDS)["cells"]
    evaluation = tmp_path / "eval"
    assert main(["prepare-data", "eval", "--source", "mini", "--out", str(evaluation), "--option", "n_rows=1",
                 "--option", "benchmarks=mini_heldout", "--option", "family=qwen3-vl"]) == 0
    assert json.loads((evaluation / "manifest.json").read_text())["family"] == "qwen3-vl"
    pictures = [p for p in evaluation.rglob("*.png") if "_mini" not in p.parts]
    assert pictures and {Image.open(p).size for p in pictures} == {(288, 288)}
    capsys.readouterr()
    for stage, more in (("train", []), ("eval", ["--option", "benchmarks=mini_heldout"])):
        assert main(["prepare-data", stage, "--source", "mini", "--out", str(tmp_path / f"bad_{stage}"),
                     "--option", "family=llava", *more]) == 2
        err = capsys.readouterr().err
        assert "llava" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / f"bad_{stage}").exists()


def test_the_qwen3vl_mini_model_is_the_same_model_in_that_architecture(tmp_path):
    """`mini-qwen3vl`'s build (2 warm-start steps here): a Qwen3-VL at the mini widths whose processor keeps the
    family's protocol bounds, so its 288 px pictures are 9x9 merged tokens in training as in evaluation."""
    from vppo.data.mini_model import MINI_SHAPE, build_mini_model
    from vppo.model_families import QWEN3_VL
    from vppo.modeling import load_processor, verify_checkpoint_dir

    path = build_mini_model(tmp_path / "model", warm_start_steps=2, family="qwen3-vl")
    verify_checkpoint_dir(path)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["text_config"]["hidden_size"] == MINI_SHAPE["hidden_size"]
    info = json.loads((path / "vppo_tiny.json").read_text())
    assert (info["family"], info["cell_px"], info["warm_start"]["steps"]) == ("qwen3-vl", 96, 2)
    processor = load_processor(path)
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (QWEN3_VL.processor_bounds.min_pixels,
                                                             QWEN3_VL.processor_bounds.max_pixels)
    picture = mini_example("train", 0, cell=mini_task.cell_size(QWEN3_VL))["image"]
    assert processor.image_processor(images=[picture], return_tensors="pt")["image_grid_thw"].tolist() == [[1, 18, 18]]


@pytest.mark.slow  # the mini_dir fixture (tests/conftest.py) builds and warm-starts the mini model (~80 s)
def test_mini_model_builds_offline_with_task_words_as_single_tokens(mini_dir):
    from vppo.modeling import load_policy, load_processor, verify_checkpoint_dir

    path = mini_dir
    verify_checkpoint_dir(path)
    info = json.loads((path / "vppo_tiny.json").read_text())
    assert info["builder"] == "vppo.data.mini_model" and info["warm_start"]["steps"] == 100
    tokenizer = load_processor(path).tokenizer
    for word in [*COLOURS, *(str(n) for n in range(10))]:
        assert len(tokenizer.tokenize(" " + word)) == 1 or len(tokenizer.tokenize(word)) == 1, word
    model = load_policy(path)
    text = model.config.text_config
    assert text.hidden_size == 128 and text.hidden_size // text.num_attention_heads == 64  # vLLM CPU: head_dim 64
    assert set(KINDS) == {"majority", "filled", "control"}


@pytest.mark.slow  # the mini_dir fixture (tests/conftest.py) builds and warm-starts the mini model (~80 s)
def test_two_steps_of_the_mini_recipe(mini_dir, tmp_path):
    """The study's recipe runs vppo (masked pass, TGF, TAS) on the mini model and data for 2 steps."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "vppo", "prepare-data", "train", "--source", "mini", "--out", str(data),
                    "--option", "n_rows=16"], check=True, capture_output=True)
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "vppo", "train", "--model", str(mini_dir), "--data", str(data), "--recipe",
                    "mini", "--method", "vppo", "--work-dir", str(tmp_path / "work"), "--out", str(out),
                    "--max-steps", "2", "--set", "rollout_batch_prompts=2", "--set", "update_batch_prompts=2"],
                   check=True, capture_output=True)
    steps = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "kept_token_fraction" in s]
    assert [s["step"] for s in logged] == [1, 2]
    assert all(0.0 < s["kept_token_fraction"] < 1.0 for s in logged)  # TGF kept a share of the tokens


@pytest.mark.slow  # the mini_dir fixture (tests/conftest.py) builds and warm-starts the mini model (~80 s)
def test_eval_source_mini_writes_the_study_sets_in_the_real_layout(mini_dir, tmp_path):
    data = tmp_path / "eval"
    subprocess.run([sys.executable, "-m", "vppo", "prepare-data", "eval", "--source", "mini", "--out", str(data),
                    "--option", "n_rows=3", "--option", "benchmarks=mini_heldout,mini_control"], check=True,
                   capture_output=True)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["files"] == {"mini_heldout": "data/vppo/vppo_mini_heldout.json",
                                 "mini_control": "data/vppo/vppo_mini_control.json"}  # through the LLaMA-Factory importer
    rows = json.loads((data / "mini_control.json").read_text())
    assert [r["messages"][1]["content"] for r in rows] == [mini_example("control", i, ("control",))["answer"]
                                                          for i in range(3)]
    # The paper's eight are not part of this source, and eval refuses a benchmark the folder does not hold.
    refused = subprocess.run([sys.executable, "-m", "vppo", "prepare-data", "eval", "--source", "mini", "--out",
                              str(tmp_path / "all"), "--option", "benchmarks=geo3k"], capture_output=True, text=True)
    assert refused.returncode == 2 and "geo3k" in refused.stderr
    missing = subprocess.run([sys.executable, "-m", "vppo", "eval", str(mini_dir), "--data", str(data), "--benchmarks",
                              "mini_heldout,geo3k", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert missing.returncode == 2 and "geo3k not prepared" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
