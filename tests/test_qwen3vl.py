"""The second model family (Qwen3-VL, vppo.model_families) end to end on CPU: its tiny build, its numbers (resize
factor, masking square, processor bounds, vision tokens), and the package commands train -> convert -> eval on it.
Qwen2.5-VL's numbers are pinned here too: they must stay what the paper's runs used."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from PIL import Image

from vppo.cli import main
from vppo.data.models import fetch_model
from vppo.masking import mask_image
from vppo.model_families import FAMILIES, QWEN2_5_VL, QWEN3_VL, family_of_dir, get_family
from vppo.modeling import load_policy, load_processor, processor_family, verify_checkpoint_dir, vision_token_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen3vl_dir(tmp_path_factory):
    """``vppo fetch-model tiny-qwen3vl``: the random-init tiny Qwen3-VL."""
    return fetch_model("tiny-qwen3vl", tmp_path_factory.mktemp("tiny-qwen3vl") / "base")


def test_family_numbers():
    assert (QWEN2_5_VL.resize_factor, QWEN2_5_VL.masking_square) == (28, 14)  # the official code's 14 px squares
    assert (QWEN3_VL.resize_factor, QWEN3_VL.masking_square) == (32, 16)
    assert QWEN2_5_VL.processor_bounds.as_dict() == {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
    assert QWEN3_VL.processor_bounds.as_dict() == {"min_pixels": 65536, "max_pixels": 16777216}
    assert get_family("qwen3_vl") is get_family("qwen3-vl") is QWEN3_VL
    with pytest.raises(ValueError, match="valid: qwen2.5-vl, qwen3-vl"):
        get_family("llava")


def test_fetch_tiny_qwen3vl_builds_a_loadable_qwen3vl_checkpoint(qwen3vl_dir):
    assert verify_checkpoint_dir(qwen3vl_dir) == qwen3vl_dir
    config = json.loads((qwen3vl_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["vision_config"]["patch_size"] == 16
    assert json.loads((qwen3vl_dir / "processor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    assert family_of_dir(qwen3vl_dir) is QWEN3_VL
    processor = load_processor(qwen3vl_dir)
    assert processor_family(processor) is QWEN3_VL and type(processor).__name__ == "ImageOnlyQwen3VLProcessor"
    assert processor.image_processor.patch_size == 16 and list(processor.image_processor.image_mean) == [0.5] * 3
    model = load_policy(qwen3vl_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    tokenizer = processor.tokenizer
    named = {tokenizer.convert_tokens_to_ids(t) for t in
             ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    assert set(vision_token_ids(model.config, tokenizer)) == named


def test_fetch_family_builds_the_generic_tiny_sources_and_refuses_another_familys_checkpoint(qwen3vl_dir, tmp_path):
    """What the workflow's ``model_family`` passes: ``vppo fetch-model tiny --family qwen3-vl`` builds a Qwen3-VL;
    a Qwen3-VL checkpoint fetched as a Qwen2.5-VL one fails and leaves nothing behind."""
    from vppo.errors import InputError

    assert family_of_dir(fetch_model("tiny", tmp_path / "tiny", family="qwen3-vl")) is QWEN3_VL
    with pytest.raises(InputError, match="a Qwen3-VL checkpoint, but the model family asked for is qwen2.5-vl"):
        fetch_model(str(qwen3vl_dir), tmp_path / "copy", family="qwen2.5-vl")
    assert not (tmp_path / "copy").exists()
    assert main(["fetch-model", "tiny", str(tmp_path / "bad"), "--family", "llava"]) == 2
    assert not (tmp_path / "bad").exists()
    # A built source of the other family is refused before its build (mini-qwen3vl's warm start takes minutes).
    import vppo.data.mini_model as mini_model

    def never(*args, **kwargs):
        raise AssertionError("built a checkpoint the family check refuses")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mini_model, "build_mini_model", never)
        with pytest.raises(InputError, match="a Qwen3-VL checkpoint, but the model family asked for is qwen2.5-vl"):
            fetch_model("mini-qwen3vl", tmp_path / "mini", family="qwen2.5-vl")
    assert not (tmp_path / "mini").exists()


def test_a_merged_token_is_a_32_px_square_of_the_input(qwen3vl_dir):
    """A 96x64 image is 3x2 merged tokens at Qwen3-VL's resize factor (4x2 plus rounding at Qwen2.5-VL's 28)."""
    from vppo.rollout import encode_prompts

    processor = load_processor(qwen3vl_dir)
    image = Image.new("RGB", (96, 64), (200, 10, 10))
    prompt = encode_prompts(processor, ["how many?"], [[image]])
    assert prompt["image_grid_thw"].tolist() == [[1, 4, 6]]  # in 16 px patches
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((prompt["input_ids"] == image_id).sum()) == 6  # one per 32 px square


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_patch_masking_blackens_whole_squares_of_the_family_size(family):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(1, 256, size=(70, 90, 3), dtype=np.uint8))
    masked = np.array(mask_image(image, "patch", np.random.default_rng(3), **family.masking_params("patch")))
    black = (masked == 0).all(axis=2)
    side = family.masking_square
    for top in range(0, 70, side):  # every square (edge ones cropped) is wholly black or untouched
        for left in range(0, 90, side):
            block = black[top:top + side, left:left + side]
            assert block.all() or not block.any()
    assert 0 < black.mean() < 1
    if family is QWEN2_5_VL:  # the family's square is the strategy's default: the published run's masking
        default = np.array(mask_image(image, "patch", np.random.default_rng(3)))
        assert np.array_equal(masked, default)


def steered_grade(response: str, answer: str):
    """The random-init model never answers: about half of its responses count as right (by a hash), so groups
    have mixed rewards and dynamic sampling keeps them."""
    from vppo.reward import Grade

    return Grade(accuracy=float(zlib.crc32(response.encode()) % 2), format=0.0, extracted=None)


def test_the_analysis_masks_and_records_the_familys_square(qwen3vl_dir, tiny_model_dir):
    from vppo.reporting.analysis import _masking_params

    assert _masking_params(load_processor(qwen3vl_dir), "patch") == {"patch_size": 16, "p": 0.5}
    assert _masking_params(load_processor(tiny_model_dir), "patch") == {"patch_size": 14, "p": 0.5}
    assert _masking_params(load_processor(qwen3vl_dir), "grey") == {"value": 128}


@pytest.fixture(scope="module")
def trained(qwen3vl_dir, tmp_path_factory):
    """Training (vppo, 2 steps, smoke recipe, the grade steered) then ``vppo convert`` on the tiny Qwen3-VL."""
    from vppo.data.train_data import prepare_train_data
    from vppo.training.rewards import GradingReward
    from vppo.training.runner import TrainRequest, run_training
    import vppo.training.trainer as trainer_module

    root = tmp_path_factory.mktemp("train-qwen3vl")
    data = prepare_train_data("synthetic", root / "data", n_rows=8)
    seen = []
    original = trainer_module.mask_row_images

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "mask_row_images", spy)
        run_training(TrainRequest(model=qwen3vl_dir, data=data, recipe="smoke", method="vppo", work_dir=root / "work",
                                  out=root / "out", max_steps=2), reward=GradingReward(steered_grade))
    converted = root / "checkpoint"
    assert main(["convert", str(root / "out" / "final"), "--out", str(converted), "--base", str(qwen3vl_dir)]) == 0
    return root / "out", converted, seen


def test_two_vppo_steps_train_with_16_px_masking_squares(trained):
    out, _, seen = trained
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2]
    assert all(line["loss"] is not None and line["dependency_kept_mean"] is not None for line in log)
    assert seen and all(kwargs == {"patch_size": 16} for kwargs in seen)


def test_the_converted_qwen3vl_checkpoints_model_card_names_its_family(trained):
    from huggingface_hub import ModelCard

    _, checkpoint, _ = trained
    card = ModelCard.load(checkpoint / "README.md")
    assert "qwen3-vl" in card.data.tags and "qwen2.5-vl" not in card.data.tags
    assert "- **model family:** Qwen3-VL" in card.text
    assert json.loads((checkpoint / "vppo_convert.json").read_text())["card"]["family"] == "qwen3-vl"


def test_hf_eval_of_the_trained_qwen3vl_records_its_family_and_protocol_bounds(trained, tmp_path):
    from vppo.data.eval_data import prepare_eval_data
    from vppo.evaluation.results import read_result

    _, checkpoint, _ = trained
    assert family_of_dir(checkpoint) is QWEN3_VL
    data = prepare_eval_data("fixtures", tmp_path / "eval-data", n_rows=1)
    out = tmp_path / "results"
    assert main(["eval", str(checkpoint), "--data", str(data), "--benchmarks", "geo3k", "--out", str(out),
                 "--samples", "2", "--max-new-tokens", "4", "--model-label", "tiny-qwen3vl",
                 "--method-label", "vppo"]) == 0
    result = read_result(out / "geo3k.json")  # validated against the Qwen3-VL protocol bounds
    assert result["model_family"] == "qwen3-vl" and result["n_samples"] == 2
    assert result["image_bounds"]["processor"] == QWEN3_VL.processor_bounds.as_dict()
