"""vppo/masking.py: determinism, no mutation, patch statistics, every strategy changes the image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vppo.masking import MASKING_STRATEGIES, mask_image, patch_mask_grid


def _textured(width=70, height=42, mode="RGB"):
    """An image whose every pixel is non-black and which is not constant (so blur changes it)."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([(x * 7) % 200 + 30, (y * 11) % 200 + 30, ((x + y) * 5) % 200 + 30], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


def test_registry_has_the_four_strategies():
    assert set(MASKING_STRATEGIES) == {"patch", "grey", "noise", "blur"}


@pytest.mark.parametrize("strategy", sorted(MASKING_STRATEGIES))
def test_every_strategy_changes_image_keeps_size_and_does_not_mutate(strategy):
    image = _textured()
    before = np.array(image).copy()
    out = mask_image(image, strategy, rng=np.random.default_rng(0))
    assert out is not image and out.mode == "RGB" and out.size == image.size
    assert np.array_equal(np.array(image), before)  # input untouched
    assert not np.array_equal(np.array(out), before)


@pytest.mark.parametrize("strategy", sorted(MASKING_STRATEGIES))
def test_same_seed_same_output_different_seed_differs_for_random_strategies(strategy):
    image = _textured()
    a = np.array(mask_image(image, strategy, rng=np.random.default_rng(123)))
    b = np.array(mask_image(image, strategy, rng=np.random.default_rng(123)))
    c = np.array(mask_image(image, strategy, rng=np.random.default_rng(124)))
    assert np.array_equal(a, b)
    assert np.array_equal(a, c) == (strategy in {"grey", "blur"})  # only patch and noise are random


def test_patch_blackening_matches_its_grid_including_partial_edge_patches():
    # 31 x 17 is not a multiple of 14: the grid is 3 x 2 and the right and bottom patches are partial.
    image = _textured(31, 17)
    out = np.array(mask_image(image, "patch", rng=np.random.default_rng(5)))
    grid = patch_mask_grid(17, 31, np.random.default_rng(5))
    assert grid.shape == (2, 3)
    for r in range(2):
        for c in range(3):
            block = out[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14]
            assert (block == 0).all() == bool(grid[r, c])
            assert (block != 0).all() == (not grid[r, c])


def test_fraction_of_blackened_patches_is_near_p():
    # 280 x 280 -> 20 x 20 = 400 patches; blackened count ~ Binomial(400, p): sd = sqrt(400 p (1-p)) <= 10.
    image = _textured(280, 280)
    for p in (0.5, 0.2):
        out = np.array(mask_image(image, "patch", rng=np.random.default_rng(7), p=p))
        patches = out.reshape(20, 14, 20, 14, 3)
        black = int((patches == 0).all(axis=(1, 3, 4)).sum())
        sd = (400 * p * (1 - p)) ** 0.5
        assert abs(black - 400 * p) <= 4 * sd


def test_p_zero_and_one_and_params():
    image = _textured(28, 28)
    assert np.array_equal(np.array(mask_image(image, "patch", rng=np.random.default_rng(0), p=0.0)), np.array(image))
    assert (np.array(mask_image(image, "patch", rng=np.random.default_rng(0), p=1.0)) == 0).all()
    assert (np.array(mask_image(image, "grey", rng=np.random.default_rng(0), value=17)) == 17).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "I;16"])
def test_non_rgb_modes_give_rgb(mode):
    image = _textured(30, 20, "RGB").convert(mode)
    for strategy in MASKING_STRATEGIES:
        out = mask_image(image, strategy, rng=np.random.default_rng(0))
        assert out.mode == "RGB" and out.size == (30, 20)


def test_noise_is_clipped_and_large():
    image = _textured(64, 64)
    out = np.array(mask_image(image, "noise", rng=np.random.default_rng(0))).astype(float)
    # std 189 noise saturates roughly half the pixels at 0 or 255 and moves the rest a lot.
    diff = out - np.array(image).astype(float)
    assert out.min() == 0 and out.max() == 255 and np.abs(diff).mean() > 60


def test_errors_name_the_module():
    with pytest.raises(ValueError, match="vppo/masking.py: unknown masking strategy 'cutout'.*blur"):
        mask_image(_textured(), "cutout", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        mask_image(_textured(), "patch")
    with pytest.raises(TypeError, match="PIL image"):
        mask_image(np.zeros((4, 4, 3)), "patch", rng=np.random.default_rng(0))
