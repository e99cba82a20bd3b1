"""Image masking strategies for the vision-dependency pass (docs/protocol.md §1).

The dependency pass re-runs the policy with every image replaced by a masked copy. Masking happens in
pixel space on the PIL image, BEFORE the image processor (a zero in normalised ``pixel_values`` is not
black). In training that image is the one already resized into the recipe's pixel bounds
(:mod:`vppo.training.images`), so a 14 px square is about one ViT patch of the model input. The official code uses random patch blackening (14 px squares, each blackened with probability
0.5, fresh randomness per call); the other strategies exist in its utilities but are unused.

All randomness comes from an explicit ``numpy.random.Generator`` so a seeded run is reproducible. Every
strategy returns a NEW RGB image and never mutates its input.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageFilter


def _as_rgb_array(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] copy of ``image`` in RGB (palette, grey, RGBA, ... are converted)."""
    return np.array(image.convert("RGB"), dtype=np.uint8, copy=True)


def patch_mask_grid(height: int, width: int, rng: np.random.Generator, patch_size: int = 14,
                    p: float = 0.5) -> np.ndarray:
    """Bool [ceil(H/ps), ceil(W/ps)]: which patches are blackened, each independently with probability p.

    Edge patches of images whose sides are not multiples of ``patch_size`` are partial squares.
    """
    if patch_size < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"vppo/masking.py: need patch_size >= 1 and 0 <= p <= 1, got {patch_size}, {p}")
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    return rng.random((rows, cols)) < p


def patch_blacken(image: Image.Image, rng: np.random.Generator, patch_size: int = 14, p: float = 0.5) -> Image.Image:
    """The code's default: set each ``patch_size`` square to black with probability ``p``."""
    pixels = _as_rgb_array(image)
    height, width = pixels.shape[:2]
    grid = patch_mask_grid(height, width, rng, patch_size, p)
    # Expand the patch grid to pixels, cropping the partial edge patches.
    pixel_mask = np.repeat(np.repeat(grid, patch_size, axis=0), patch_size, axis=1)[:height, :width]
    pixels[pixel_mask] = 0
    return Image.fromarray(pixels)


def grey_fill(image: Image.Image, rng: np.random.Generator, value: int = 128) -> Image.Image:
    """The whole image replaced by a constant grey (``rng`` unused; kept for a uniform signature)."""
    width, height = image.size
    return Image.new("RGB", (width, height), (value, value, value))


def gaussian_noise(image: Image.Image, rng: np.random.Generator, std: float = 189.0) -> Image.Image:
    """Additive Gaussian pixel noise of standard deviation ``std`` (0-255 scale), clipped to [0, 255]."""
    pixels = _as_rgb_array(image).astype(np.float32)
    noisy = pixels + rng.normal(0.0, std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def gaussian_blur(image: Image.Image, rng: np.random.Generator, radius: float = 6.0) -> Image.Image:
    """PIL Gaussian blur of ``radius`` px (deterministic; ``rng`` unused)."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=radius))


#: strategy name -> fn(image, rng, **params) -> new RGB image
MASKING_STRATEGIES: dict[str, Callable[..., Image.Image]] = {
    "patch": patch_blacken,
    "grey": grey_fill,
    "noise": gaussian_noise,
    "blur": gaussian_blur,
}


def mask_image(image: Image.Image, strategy: str = "patch", rng: np.random.Generator | None = None,
               **params) -> Image.Image:
    """A masked RGB copy of ``image`` with the named strategy; ``params`` go to the strategy
    (patch: patch_size=14, p=0.5; grey: value=128; noise: std=189; blur: radius=6).

    ``rng`` is required for the random strategies: pass a seeded ``numpy.random.Generator``.
    """
    try:
        fn = MASKING_STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"vppo/masking.py: unknown masking strategy {strategy!r}; "
                         f"valid: {sorted(MASKING_STRATEGIES)}") from None
    if rng is None:
        raise ValueError("vppo/masking.py: mask_image needs an explicit rng=numpy.random.Generator (seeded)")
    if not isinstance(image, Image.Image):
        raise TypeError(f"vppo/masking.py: mask_image expects a PIL image, got {type(image).__name__}")
    return fn(image, rng, **params)
