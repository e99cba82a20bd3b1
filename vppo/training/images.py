"""Training images, resized once into the recipe's pixel bounds before anything sees them.

The official training code resizes every image with PIL when it is read: if it has more than ``max_pixels``
pixels, both sides are scaled by sqrt(max_pixels / (w * h)) and truncated to integers; then, if it has fewer
than ``min_pixels``, the same with ``min_pixels``. The resize happens in the image's own mode (PIL's default
filter for that mode), and the result is converted to RGB. Every consumer then gets that one image: the
rollout engine (HF ``generate`` or vLLM, which receives the PIL images as they come from the dataset), the
old-log-prob pass and the masked-image pass. The processor that encodes it is the checkpoint's own, as is
vLLM's, so both count the same image tokens; the training bounds never reach a processor config.
"""

from __future__ import annotations

import io
import math
from typing import Any

from PIL import Image

from vppo.eval_images import PixelBounds, base_resize_sizes


def training_image_size(width: int, height: int, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) after the training resize of a ``width`` x ``height`` image (bounds None = no bound).

    The same area steps as the evaluation's base resize (:func:`vppo.eval_images.base_resize_sizes`), with the
    recipe's bounds; the image is then resized once, straight to the last size.
    """
    bounds = PixelBounds(min_pixels=min_pixels or 0, max_pixels=math.inf if max_pixels is None else max_pixels)
    sizes = base_resize_sizes(width, height, bounds)
    return sizes[-1] if sizes else (width, height)


def resize_training_image(image: Image.Image, min_pixels: int | None, max_pixels: int | None) -> Image.Image:
    """The training copy of ``image``: resized into [min_pixels, max_pixels] in its own mode, then RGB."""
    image.load()
    size = training_image_size(image.width, image.height, min_pixels, max_pixels)
    if size != image.size:
        image = image.resize(size)
    return image if image.mode == "RGB" else image.convert("RGB")


def _open(value: Any) -> Image.Image:
    """A PIL image from what a ``datasets.Image(decode=False)`` cell holds (path and/or bytes)."""
    if isinstance(value, Image.Image):
        return value
    if value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    return Image.open(value["path"])


def with_training_images(dataset, min_pixels: int | None, max_pixels: int | None):
    """``dataset`` whose ``images`` column yields the resized training images (computed on access).

    The column is read undecoded so each file is opened in its own mode, as the official code does; the
    transform is deterministic, so every access (rollout, refill, masked pass) gets the identical image.
    """
    import datasets

    undecoded = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))

    def transform(batch: dict[str, list]) -> dict[str, list]:
        if "images" in batch:
            batch = dict(batch)
            batch["images"] = [[resize_training_image(_open(cell), min_pixels, max_pixels) for cell in cells or []]
                               for cells in batch["images"]]
        return batch

    return undecoded.with_transform(transform)
