"""Row selection and concatenation of TRL rollout batches (the dicts ``_generate_and_score_completions`` returns).

Dynamic sampling keeps some prompt groups of a rollout and tops the batch up with groups from further
rollouts, so rollout dicts of different widths must be merged. Widths: prompt tensors [B, P] are
left-padded, completion tensors [B, C] right-padded, ``mm_token_type_ids`` [B, P + C] is both (split at P).
Vision tensors are handled per row through TRL's ``split_pixel_values_by_grid`` (lists of per-row tensors).
Between the passes that read them, a stored rollout keeps its pixels in host memory (:func:`offloaded`,
:func:`on_device`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

PROMPT_KEYS = ("prompt_ids", "prompt_mask")
#: keys that are not per-row and are recomputed after a merge
GLOBAL_KEYS = ("num_items_in_batch",)
#: domain tag of the data-order permutations (keeps them apart from the other seeded streams)
_TAG_ORDER = 0x6F726472


#: TRL rollout keys that are model inputs besides ids and masks
VISION_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids", "num_images")
#: Rollout tensors kept in host memory between the passes that read them: every row's own copy of its images'
#: pixel_values (12 MB per 1M-pixel image in bf16) would otherwise sit on the GPU through the next generation rounds
#: next to the awake vLLM engine (docs/cluster.md, GPU memory budget). They go to the device only for a forward pass.
OFFLOADED_KEYS = ("pixel_values",)
ROLLOUT_STORAGE = torch.device("cpu")


def offloaded(batch: dict) -> dict:
    """``batch`` with its :data:`OFFLOADED_KEYS` tensors in host memory (:data:`ROLLOUT_STORAGE`)."""
    return {k: v.to(ROLLOUT_STORAGE) if k in OFFLOADED_KEYS and isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def on_device(batch: dict, device: torch.device) -> dict:
    """``batch`` with its :data:`OFFLOADED_KEYS` tensors on ``device`` (the stored batch keeps its host copies)."""
    return {k: v.to(device) if k in OFFLOADED_KEYS and isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _completion_keys(batch: dict[str, Any]) -> list[str]:
    width = batch["completion_ids"].shape[1]
    return [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() == 2 and k not in PROMPT_KEYS
            and k != "mm_token_type_ids" and v.shape[1] == width]


def _pad_to(t: torch.Tensor, width: int, side: str, value: float = 0) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    return F.pad(t, (extra, 0) if side == "left" else (0, extra), value=value)


def select_rows(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The rollout dict restricted to ``rows`` (in that order); vision tensors follow their rows."""
    split = split_pixel_values_by_grid(batch)
    out: dict[str, Any] = {}
    index = torch.tensor(rows, dtype=torch.long)
    n = batch["prompt_ids"].shape[0]
    for key, value in split.items():
        if key in GLOBAL_KEYS:
            continue
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
            out[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return unsplit_pixel_values_by_grid(out)


def concat_rollouts(batches: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Concatenate rollout dicts row-wise, padding prompts on the left and completions on the right."""
    if len(batches) == 1:
        return {k: v for k, v in batches[0].items() if k not in GLOBAL_KEYS}
    split = [split_pixel_values_by_grid(b) for b in batches]
    p_width = max(b["prompt_ids"].shape[1] for b in batches)
    c_width = max(b["completion_ids"].shape[1] for b in batches)
    completion_keys = _completion_keys(batches[0])
    out: dict[str, Any] = {}
    for key in split[0]:
        if key in GLOBAL_KEYS:
            continue
        values = [b[key] for b in split]
        if key in PROMPT_KEYS:
            pad = pad_token_id if key == "prompt_ids" else 0
            out[key] = torch.cat([_pad_to(v, p_width, "left", pad) for v in values])
        elif key == "mm_token_type_ids":
            parts = []
            for b, v in zip(batches, values):
                p = b["prompt_ids"].shape[1]
                parts.append(torch.cat([_pad_to(v[:, :p], p_width, "left"), _pad_to(v[:, p:], c_width, "right")], 1))
            out[key] = torch.cat(parts)
        elif key in completion_keys:
            pad = pad_token_id if key == "completion_ids" else 0
            out[key] = torch.cat([_pad_to(v, c_width, "right", pad) for v in values])
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values)
        elif isinstance(values[0], list):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = values[0]
    return unsplit_pixel_values_by_grid(out)


# ------------------------------------------------------------------ the data order

def data_order(n_rows: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset rows ``start .. start+count-1`` of the training data stream: epoch after epoch, each a seeded
    permutation of the ``n_rows`` rows (epoch e: ``numpy.random.default_rng([seed, e, tag])``).

    Every rollout batch and every dynamic-sampling refill takes the next prompts of this stream, as the
    official trainer takes the next batches of its data loader.
    """
    if n_rows < 1:
        raise ValueError("the training data stream needs at least one row")
    rows, permutations = [], {}
    for position in range(start, start + count):
        epoch = position // n_rows
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([int(seed), epoch, _TAG_ORDER]).permutation(n_rows)
        rows.append(int(permutations[epoch][position % n_rows]))
    return rows


# ------------------------------------------------------------------ update mini-batch layout

def micro_batch_rows(rows: list[int], n_micro: int) -> list[list[int]]:
    """Split the rollout rows, in the given order, into ``n_micro`` equal consecutive micro-batches."""
    if n_micro < 1 or len(rows) % n_micro:
        raise ValueError(f"a rollout of {len(rows)} rows does not split into {n_micro} equal micro-batches")
    size = len(rows) // n_micro
    return [list(rows[i * size:(i + 1) * size]) for i in range(n_micro)]


def update_rows(micro_rows: list[list[int]], micro_per_update: int) -> list[list[int]]:
    """Rows of each optimizer update: consecutive groups of ``micro_per_update`` micro-batches.

    TRL feeds buffered micro-batch ``k`` to the k-th training step of the rollout and steps the optimizer every
    ``gradient_accumulation_steps`` training steps, so update ``u`` is micro-batches [u*GA, (u+1)*GA).
    """
    if micro_per_update < 1 or len(micro_rows) % micro_per_update:
        raise ValueError(f"{len(micro_rows)} micro-batches do not form whole updates of {micro_per_update}")
    return [[row for micro in micro_rows[u:u + micro_per_update] for row in micro]
            for u in range(0, len(micro_rows), micro_per_update)]
