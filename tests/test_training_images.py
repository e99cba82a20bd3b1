"""Training images are resized once, as the official dataset code does, and every pass sees that one image:
the rollout engine, the old-log-prob pass and the masked pass, with the token count of the checkpoint's own
processor (the one vLLM builds from the checkpoint)."""

from __future__ import annotations

import pytest
from PIL import Image

from vppo.training.images import resize_training_image, training_image_size

PAPER_BOUNDS = (256 * 28 * 28, 1280 * 28 * 28)


@pytest.mark.parametrize("raw, resized", [
    ((300, 200), (548, 365)),      # upscaled: sqrt(200704 / 60000) = 1.829..., sides truncated
    ((1600, 1200), (1156, 867)),   # downscaled: sqrt(1003520 / 1920000) = 0.7229...
    ((640, 480), (640, 480)),      # inside the bounds: untouched
    ((5000, 20), (7083, 28)),      # a strip: upscaled by sqrt(200704 / 100000), aspect ratio kept
])
def test_training_size_is_the_official_formula(raw, resized):
    assert training_image_size(*raw, *PAPER_BOUNDS) == resized
    assert training_image_size(*raw, None, None) == raw


def test_resize_works_in_the_images_own_mode_and_returns_rgb():
    grey = Image.linear_gradient("L").resize((300, 200))
    out = resize_training_image(grey, *PAPER_BOUNDS)
    assert out.mode == "RGB" and out.size == (548, 365)
    expected = grey.resize((548, 365)).convert("RGB")  # resized as L, converted afterwards
    assert out.tobytes() == expected.tobytes()
    rgb = Image.new("RGB", (640, 480), (1, 2, 3))
    assert resize_training_image(rgb, *PAPER_BOUNDS).tobytes() == rgb.tobytes()


# ------------------------------------------------------------------ one trainer, one rollout

TINY_BOUNDS = {"min_pixels": 28 * 28 * 6, "max_pixels": 28 * 28 * 12}
RAW_SIZES = [(300, 200), (40, 30), (60, 90), (200, 300)]


@pytest.fixture(scope="module")
def sized_data(tmp_path_factory):
    """Training rows whose images are above, below and inside the bounds."""
    from vppo.data.train_data import synthetic_example, write_layout

    examples = []
    for i, size in enumerate(RAW_SIZES):
        row, image = synthetic_example(i, seed=0)
        examples.append((row, [image.resize(size)]))
    return write_layout(examples, tmp_path_factory.mktemp("sized") / "data", source="test")


@pytest.mark.slow
def test_every_pass_gets_the_resized_image_and_the_checkpoints_token_count(tiny_model_dir, sized_data, tmp_path):
    import vppo.training.trainer as trainer_module
    from vppo.modeling import load_processor
    from vppo.training.recipes import load_recipe
    from vppo.training.rewards import GradingReward
    from vppo.training.runner import TrainRequest, build_trainer, cpu_threads, prompt_token_counts

    recipe = load_recipe("smoke", {**TINY_BOUNDS, "rollout_batch_prompts": 4, "update_batch_prompts": 4,
                                   "micro_batch_responses": 4, "save_steps": 1})
    request = TrainRequest(model=tiny_model_dir, data=sized_data, recipe="smoke", method="vppo",
                           work_dir=tmp_path / "work", out=tmp_path / "out")
    base = load_processor(tiny_model_dir)  # what vLLM loads from the checkpoint
    seen = {}
    with cpu_threads(recipe), pytest.MonkeyPatch.context() as patch:
        trainer = build_trainer(request, recipe, reward=GradingReward(lambda text, answer: _half(text))).trainer
        trainer.model.train()
        generate, mask = trainer._generate_and_score_completions, trainer_module.mask_row_images

        def spy_generate(examples):
            seen.setdefault("generated", []).extend(ex["images"] for ex in examples)
            out = generate(examples)
            seen.setdefault("grids", []).append(out["image_grid_thw"])
            return out

        def spy_mask(row_images, *args, **kwargs):
            seen["masked"] = [list(images) for images in row_images]
            return mask(row_images, *args, **kwargs)

        patch.setattr(trainer, "_generate_and_score_completions", spy_generate)
        patch.setattr(trainer_module, "mask_row_images", spy_mask)
        examples = [row for row in trainer.train_dataset for _ in range(trainer.num_generations)]
        trainer._build_rollout(examples)

    # the checkpoint's own processor encodes them: the training bounds never reach a processor config
    assert trainer.processing_class.image_processor.to_dict() == base.image_processor.to_dict()
    expected = {training_image_size(*size, **TINY_BOUNDS) for size in RAW_SIZES}
    generated = [image for images in seen["generated"] for image in images]
    assert {image.size for image in generated} == expected and all(image.mode == "RGB" for image in generated)
    assert {image.size for images in seen["masked"] for image in images} <= expected
    # the rollout's image tokens are what the checkpoint's own processor gives for the images the engine got
    import torch

    rollout_grids = torch.cat(seen["grids"])
    assert torch.equal(rollout_grids, base.image_processor(images=generated, return_tensors="pt")["image_grid_thw"])
    # and the prompt-length filter counts the same tokens
    from vppo.data.train_data import load_train_dataset
    from vppo.rollout import content_text, encode_prompts

    counts = prompt_token_counts(load_train_dataset(sized_data), base, **TINY_BOUNDS)
    for row, count in zip(trainer.train_dataset, counts):
        encoded = encode_prompts(base, [content_text(row["prompt"][-1]["content"])], [row["images"]])
        assert count == int(encoded["attention_mask"].sum())


def _half(text: str):
    from vppo.reward import Grade

    return Grade(accuracy=float(len(text) % 2), format=0.0, extracted=None)


# ------------------------------------------------------------------ the masked pass masks the resized image

def _black_cells(image: Image.Image, patch: int = 14):
    """Per 14 px cell of ``image``: True if the whole cell is black, None if partly black (not on the grid)."""
    import numpy as np

    black = (np.asarray(image) == 0).all(-1)
    cells = []
    for y in range(0, image.height, patch):
        for x in range(0, image.width, patch):
            cell = black[y:y + patch, x:x + patch]
            cells.append(True if cell.all() else (False if not cell.any() else None))
    return cells


@pytest.mark.parametrize("raw", [(300, 200), (1600, 1200)])
def test_a_masked_square_is_about_one_vit_patch_of_the_model_input_whatever_the_raw_size(raw, tmp_path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from vppo.data.train_data import load_train_dataset, synthetic_example, write_layout
    from vppo.training.dependency import mask_row_images
    from vppo.training.images import with_training_images

    row, image = synthetic_example(0, seed=0)
    noisy = Image.effect_noise(raw, 60).convert("RGB")  # no black pixels of its own
    data = write_layout([(row, [Image.blend(image.resize(raw), noisy, 0.5)])], tmp_path / "data", source="test")
    dataset = with_training_images(load_train_dataset(data), *PAPER_BOUNDS)
    (masked,), = mask_row_images([dataset[0]["images"]], "patch", seed=0, step=0)
    assert masked.size == training_image_size(*raw, *PAPER_BOUNDS)  # the trainer masks the resized image
    cells = _black_cells(masked)
    assert None not in cells and 0.3 < sum(cells) / len(cells) < 0.7  # whole 14 px squares, about half of them
    # Qwen's default processor bounds (what encodes it) only round the resized image to multiples of 28
    height, width = smart_resize(masked.height, masked.width, factor=28, min_pixels=3136, max_pixels=12845056)
    square = 14 * width / masked.width, 14 * height / masked.height
    # (masking the raw image and letting a processor bounded by the recipe resize it gave 26 px and 10 px)
    assert all(13.5 < side < 14.6 for side in square), square


# ------------------------------------------------------------------ checkpoints carry the base processor

def _processor_files(folder):
    import json

    return {name: json.loads((folder / name).read_text())
            for name in ("preprocessor_config.json", "processor_config.json") if (folder / name).is_file()}


@pytest.mark.slow
def test_trained_and_converted_checkpoints_carry_the_base_processor(tiny_model_dir, sized_data, tmp_path):
    import json

    from vppo.training.convert import convert
    from vppo.training.rewards import GradingReward
    from vppo.training.runner import TrainRequest, run_training

    request = TrainRequest(model=tiny_model_dir, data=sized_data, recipe="smoke", method="grpo",
                           work_dir=tmp_path / "work", out=tmp_path / "out", max_steps=1, overrides=dict(TINY_BOUNDS))
    out = run_training(request, reward=GradingReward(lambda text, answer: _half(text)))
    base = _processor_files(tiny_model_dir)
    assert base and "image_processor" in json.dumps(base)
    assert _processor_files(out / "final") == base
    convert(out, tmp_path / "hf", base=tiny_model_dir)
    assert _processor_files(tmp_path / "hf") == base
