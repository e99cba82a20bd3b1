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
