"""The masked-image pass (docs/protocol.md §1): every image of a rollout row masked in pixel space, re-encoded by
the image processor, then scored by one of :data:`DEPENDENCY_PASSES` (the method preset's estimator).

Masking happens on the PIL image before the processor (a zero in normalised ``pixel_values`` is not black).
The masked copy has the original size, so the processor yields the same ``image_grid_thw`` and the same
number of vision tokens: prompt ids, attention mask and ``mm_token_type_ids`` of the rollout are reused as
they are, only ``pixel_values`` change (:func:`vppo.modeling.masked_pixel_values`, shared with the analysis).
Randomness is a numpy Generator seeded from (seed, global step, process, row), so a resumed run masks exactly
as an uninterrupted one. :func:`rollout_weights` turns a rollout's scores into the TGF mask and TAS alpha of each
update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from vppo.algorithm import MethodPreset, consecutive_groups, k3_dependency, vppo_weights
from vppo.masking import mask_image
from vppo.training.exact_kl import exact_kl_pass


def row_rng(seed: int, step: int, process_index: int, row: int) -> np.random.Generator:
    """The Generator that masks the images of one row of one rollout."""
    return np.random.default_rng([int(seed), int(step), int(process_index), int(row)])


def mask_row_images(
    row_images: Sequence[Sequence[Image.Image] | None],
    strategy: str,
    seed: int,
    step: int,
    process_index: int = 0,
    **params,
) -> list[list[Image.Image]]:
    """Masked copies of each row's images (rows without images give an empty list)."""
    masked = []
    for row, images in enumerate(row_images):
        rng = row_rng(seed, step, process_index, row)
        masked.append([mask_image(image, strategy, rng, **params) for image in (images or [])])
    return masked


def sampled_token_pass(trainer, batch: dict, masked_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(old log-probs [B, T], k3 dependency [B, T]): the official code's two sampled-token log-prob passes of
    TRL's fused head (real image, then masked image), over the whole rollout in TRL's micro-batches."""
    with trainer.timer.phase("old_logp"):
        old = trainer.rollout_logps(batch, batch.get("pixel_values"))
    with trainer.timer.phase("masked_pass"):
        masked = trainer.rollout_logps(batch, masked_pixels)
    return old, k3_dependency(old, masked, batch["completion_mask"])


#: estimator (MethodPreset.dependency_estimator) -> fn(trainer, rollout batch, masked pixel_values) ->
#: (old log-probs [B, T], dependency [B, T]); the keys are those of vppo.algorithm.DEPENDENCY_ESTIMATORS
DEPENDENCY_PASSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "k3": sampled_token_pass,
    "kl": exact_kl_pass,
}


def rollout_weights(preset: MethodPreset, dependency: torch.Tensor, mask: torch.Tensor, updates: list[list[int]],
                    tas_group_responses: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The rollout's TGF mask [B, T] and TAS alpha [B] under ``preset`` (None where it leaves the loss alone),
    each update's rows weighed together: min/max over the update, mu per run of ``tas_group_responses``
    consecutive rows of it (:func:`vppo.algorithm.vppo_weights` per update)."""
    token_mask = torch.ones_like(dependency) if preset.use_tgf else None
    alpha = torch.ones(mask.shape[0], device=mask.device) if preset.use_tas else None
    for rows in updates:
        index = torch.tensor(rows, device=mask.device)
        groups = consecutive_groups(len(rows), tas_group_responses, device=mask.device)
        weights = vppo_weights(preset, dependency[index], mask[index], tas_groups=groups)
        if token_mask is not None:
            token_mask[index] = weights.token_mask
        if alpha is not None:
            alpha[index] = weights.alpha
    return token_mask, alpha
