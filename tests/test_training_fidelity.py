"""Training inputs as the official run builds them (huaixuheqing/VPPO-RL, ``verl/utils/dataset.py``), checked
against transcriptions of its code: where each image goes in the prompt, and the mode each image is resized in."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image, ImageDraw

from vppo.rollout import IMAGE_PLACEHOLDER, REASONING_INSTRUCTION

#: The recipe bounds of the official run (examples/configs/config.yaml: 256*28*28 .. 1280*28*28).
PAPER_BOUNDS = (200704, 1003520)


# ------------------------------------------------------------------ transcriptions of the official code

def official_messages(problem: str) -> list[dict]:
    """``RLHFDataset._build_messages`` with ``math_format_perception.jinja`` (``{{ content | trim }}``, a blank
    line, the instruction): the rendered text split at ``<image>``, an image part before every piece but the
    first, empty pieces skipped."""
    rendered = problem.strip() + "\n\n" + REASONING_INSTRUCTION
    content = []
    for i, piece in enumerate(rendered.split("<image>")):
        if i != 0:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


def official_process_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """``process_image``: scale down past max_pixels, then up under min_pixels, in the image's own mode
    (PIL's default filter for that mode), then RGB."""
    image.load()
    if image.width * image.height > max_pixels:
        factor = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.width * image.height < min_pixels:
        factor = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    return image.convert("RGB") if image.mode != "RGB" else image


# ------------------------------------------------------------------ item 3: image placement

def _trainer_prompt_ids(processor, row: dict) -> list[int]:
    """The prompt ids TRL's GRPOTrainer encodes for a dataset row (``prepare_multimodal_messages`` fills the
    image parts, then the processor's chat template, as ``_tokenize_prompts``)."""
    from trl.data_utils import prepare_multimodal_messages

    messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
    encoded = processor.apply_chat_template(conversation=[messages], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
    return list(encoded["input_ids"][0])


def test_images_stand_where_their_placeholder_stands_as_in_the_official_prompt(tiny_model_dir, tmp_path):
    """A multiple-choice row whose ``<image>`` trails the options (one in six of the training set's): the image
    comes after the question, as officially; TRL's default put it first."""
    from vppo.data.train_data import load_train_dataset, write_layout
    from vppo.modeling import load_processor
    from vppo.training.images import with_training_images

    picture = Image.new("RGB", (56, 56), (255, 255, 255))
    trailing = "Which value is larger?\nA. 3\nB. 5\n<image>  "
    inner = "  Compare <image> with <image>: which has more squares?"
    leading = "<image>How many red squares are in the picture?"
    rows = [({"id": "trailing", "problem": trailing, "answer": "B"}, [picture]),
            ({"id": "inner", "problem": inner, "answer": "1"}, [picture, picture]),
            ({"id": "leading", "problem": leading, "answer": "2"}, [picture])]
    data = write_layout(rows, tmp_path / "data", source="test")
    dataset = with_training_images(load_train_dataset(data), None, None)
    processor = load_processor(tiny_model_dir)
    for row, (raw, images) in zip(dataset, rows):
        official = processor.apply_chat_template(official_messages(raw["problem"]), add_generation_prompt=True,
                                                 tokenize=False)
        expected = processor(images=images, text=[official], add_special_tokens=False)["input_ids"][0]
        assert _trainer_prompt_ids(processor, row) == list(expected), raw["id"]
    text = processor.decode(_trainer_prompt_ids(processor, dataset[0]))
    assert text.index("B. 5") < text.index("<|vision_start|>") < text.index(REASONING_INSTRUCTION[:20])


# ------------------------------------------------------------------ item 2: the mode an image is resized in

def _mode_images() -> dict[str, Image.Image]:
    """300x200 pictures in the modes whose resize differs from an RGB one: palette and 1-bit (nearest
    neighbour), RGBA and LA with transparent white (black once resized: PIL premultiplies alpha)."""
    size = (300, 200)
    palette = Image.new("P", size, 0)
    palette.putpalette([255, 255, 255, 200, 30, 30, 30, 60, 220] + [0] * (256 * 3 - 9))
    draw = ImageDraw.Draw(palette)
    for x in range(0, size[0], 6):
        draw.rectangle([x, 0, x + 2, size[1]], fill=1 + (x // 6) % 2)
    bits = Image.new("1", size, 0)
    ImageDraw.Draw(bits).rectangle([0, 0, size[0], size[1]], fill=0)
    for x in range(0, size[0], 3):
        ImageDraw.Draw(bits).line([x, 0, x, size[1]], fill=1)
    rgba = Image.new("RGBA", size, (255, 255, 255, 0))
    ImageDraw.Draw(rgba).ellipse([60, 40, 240, 160], fill=(200, 30, 30, 255))
    la = Image.new("LA", size, (255, 0))
    ImageDraw.Draw(la).rectangle([50, 50, 250, 150], fill=(90, 255))
    return {"P": palette, "1": bits, "RGBA": rgba, "LA": la}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_training_images_are_resized_in_their_own_mode_after_import(tmp_path, monkeypatch):
    """Through the hub import (parquet as the hub stores it) and a copy of the layout, each image reaches the
    training resize in its stored mode: the trainer's image equals the official loader's, pixel for pixel
    (the import converted to RGB first: bicubic everywhere, white where transparent)."""
    import datasets
    import numpy as np

    from vppo.data.train_data import load_train_dataset, prepare_train_data
    from vppo.training.images import with_training_images

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    pictures = _mode_images()
    stored = {mode: _png(img) for mode, img in pictures.items()}
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    datasets.Dataset.from_dict({"images": [[{"bytes": b, "path": None}] for b in stored.values()],
                                "problem": [f"<image>What is drawn ({mode})?" for mode in stored],
                                "answer": ["1"] * len(stored)}, features=features).to_parquet(hub / "data" / "t.parquet")
    imported = prepare_train_data("hub", tmp_path / "train", repo=str(hub))
    copied = prepare_train_data(str(imported), tmp_path / "copy")
    for layout in (imported, copied):
        dataset = with_training_images(load_train_dataset(layout), *PAPER_BOUNDS)
        for (mode, data), row in zip(stored.items(), dataset):
            official = official_process_image(Image.open(io.BytesIO(data)), *PAPER_BOUNDS)
            rgb_first = official_process_image(Image.open(io.BytesIO(data)).convert("RGB"), *PAPER_BOUNDS)
            assert not np.array_equal(np.asarray(official), np.asarray(rgb_first)), mode  # the case matters
            assert np.array_equal(np.asarray(row["images"][0]), np.asarray(official)), (layout.name, mode)
    transparent = official_process_image(Image.open(io.BytesIO(stored["RGBA"])), *PAPER_BOUNDS).getpixel((0, 0))
    assert transparent == (0, 0, 0)  # upscaled transparent white comes out black, as officially
