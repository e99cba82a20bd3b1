"""Evaluation images as the model sees them (pure functions on PIL images; no torch, no lmms-eval).

:func:`prepare_image` is LLaMA-Factory's image pre-processing for Qwen2-VL models as PAPO-Eval runs it
(:data:`RESIZE_BOUNDS`, then each side >= 28 px and the aspect ratio clamped), after which the processor applies
:data:`PROCESSOR_BOUNDS`. It sits on the foundation floor because evaluation, the token-dependency analysis and
the tiny-model builder (data floor) all feed images through it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from PIL import Image


@dataclass(frozen=True)
class PixelBounds:
    """A [min_pixels, max_pixels] range of image area (width * height)."""

    min_pixels: int
    max_pixels: int

    def as_dict(self) -> dict:
        return asdict(self)


#: LLaMA-Factory's resize before the processor (PAPO-Eval's image_min_pixels / image_max_pixels).
RESIZE_BOUNDS = PixelBounds(min_pixels=32 * 32, max_pixels=768 * 768)
#: The image processor's bounds in every evaluation: Qwen2.5-VL's defaults (56*56 .. 28*28*16384). Never the
#: bounds a checkpoint's saved processor may carry (a trained one can hold the training bounds 200704..1003520,
#: which would upsample most benchmark images for that model only).
PROCESSOR_BOUNDS = PixelBounds(min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
#: LLaMA-Factory's Qwen2-VL plugin: shortest side at least 28 px; a side over 200x the other is cut to 180x it.
MIN_SIDE = 28
MAX_ASPECT_RATIO = 200
CLAMPED_ASPECT_RATIO = 180


def protocol_image_bounds(processor: PixelBounds = PROCESSOR_BOUNDS) -> dict:
    """What a result records about image sizes: the resize bounds and the processor bounds it ran with."""
    return {"resize": RESIZE_BOUNDS.as_dict(), "processor": processor.as_dict()}


def base_resize_sizes(width: int, height: int, bounds: PixelBounds = RESIZE_BOUNDS) -> list[tuple[int, int]]:
    """Successive (w, h) of LLaMA-Factory's base pre-processing, in order (empty: size kept).

    Downscale when w*h > max_pixels, then (checked on the size reached) upscale when w*h < min_pixels; each
    time both sides are scaled by sqrt(bound / (w*h)) and truncated to integers.
    """
    sizes = []
    if width * height > bounds.max_pixels:
        factor = math.sqrt(bounds.max_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
        sizes.append((width, height))
    if width * height < bounds.min_pixels:
        factor = math.sqrt(bounds.min_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
        sizes.append((width, height))
    return sizes


def qwen_resize_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Successive (w, h) of LLaMA-Factory's Qwen2-VL step after the base one, in order (empty: size kept).

    A side under 28 px is raised to 28 (the other side unchanged), then a width over 200x the height becomes
    180x the height, then a height over 200x the width becomes 180x the width.
    """
    sizes = []
    if min(width, height) < MIN_SIDE:
        width, height = max(width, MIN_SIDE), max(height, MIN_SIDE)
        sizes.append((width, height))
    if width / height > MAX_ASPECT_RATIO:
        width = height * CLAMPED_ASPECT_RATIO
        sizes.append((width, height))
    if height / width > MAX_ASPECT_RATIO:
        height = width * CLAMPED_ASPECT_RATIO
        sizes.append((width, height))
    return sizes


def prepare_image(image: Image.Image) -> Image.Image:
    """The image as PAPO-Eval hands it to the model: a new RGB image (the input is left as it is).

    Resized in its own mode with PIL's default filter for that mode (nearest for palette and 1-bit images,
    bicubic otherwise), converted to RGB, then the Qwen2-VL side and aspect-ratio steps.
    """
    result = image
    for size in base_resize_sizes(*result.size):
        result = result.resize(size)
    if result.mode != "RGB":
        result = result.convert("RGB")
    for size in qwen_resize_sizes(*result.size):
        result = result.resize(size)
    return result.copy() if result is image else result
