"""The GPU memory budget of a training rank with colocated vLLM (docs/cluster.md), as small pure functions.

It decides ``vllm_enable_sleep_mode: auto``: sleep mode frees vLLM's weights and KV cache while the policy trains,
and TRL then pushes every weight into the engine again before each generation round (refills included); where the
GPU holds the training peak and vLLM's share together, sleep mode is off. GB = 10^9 bytes; upper bounds for
full-length sequences in bf16, as the tables of docs/cluster.md, which these functions reproduce.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

#: CUDA context, communication buffers and gathered ZeRO-3 layers beside the partitioned state (GB)
OVERHEAD_GB = 4.0
#: what a GPU keeps free besides the budget (fragmentation, the vision tower's activations) (GB)
HEADROOM_GB = 4.0
#: values of one patch of Qwen2.5-VL's pixel_values: 3 channels x 2 frames x 14 x 14, one patch per 14 x 14 pixels
PATCH_VALUES, PATCH_PIXELS = 3 * 2 * 14 * 14, 14 * 14


@dataclass(frozen=True)
class Architecture:
    """What the budget needs of the language model (config.json's ``text_config`` or top level)."""

    layers: int
    hidden: int
    mlp: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        text = config.get("text_config") or config
        return cls(layers=int(text["num_hidden_layers"]), hidden=int(text["hidden_size"]),
                   mlp=int(text["intermediate_size"]), vocab=int(text.get("vocab_size") or config["vocab_size"]))


def resident_gb(params: float, world: int) -> float:
    """ZeRO-3 state per rank (16 bytes per parameter over all ranks) + overhead."""
    return 16 * params / world / 1e9 + OVERHEAD_GB


def training_peak_gb(arch: Architecture, params: float, world: int, micro: int, sequence: int, response: int) -> float:
    """Peak of the training phase with gradient checkpointing: resident + layer checkpoints + one layer's MLP
    recomputed + the response logits (bf16 + float32 log-softmax), for ``micro`` sequences of ``sequence`` tokens."""
    checkpoints = arch.layers * micro * sequence * arch.hidden * 2
    recomputed = 3 * micro * sequence * arch.mlp * 2
    logits = micro * response * arch.vocab * 6
    return resident_gb(params, world) + (checkpoints + recomputed + logits) / 1e9


def rollout_pixels_gb(rows: int, max_pixels: int, bytes_per_value: int = 2) -> float:
    """The rollout's pixel_values on the device during its old-log-prob and masked-image passes: every row's own
    copy of a ``max_pixels`` image, real and masked (``rows``: this rank's rows)."""
    return 2 * rows * (max_pixels / PATCH_PIXELS) * PATCH_VALUES * bytes_per_value / 1e9


def pass_peak_gb(arch: Architecture, params: float, world: int, micro: int, response: int, rows: int,
                 max_pixels: int) -> float:
    """Peak of the rollout's scoring passes (no gradient): resident + both pixel_values copies + one chunk's logits."""
    return resident_gb(params, world) + rollout_pixels_gb(rows, max_pixels) + micro * response * arch.vocab * 6 / 1e9


def sleep_needed(peak_gb: float, utilization: float, gpu_gb: float) -> bool:
    """Whether vLLM must sleep while the policy trains: its share of the GPU next to the training peak (and the
    headroom) does not fit."""
    return peak_gb + utilization * gpu_gb + HEADROOM_GB > gpu_gb


def sleep_mode_for(recipe, arch: Architecture, params: float, gpu_gb: float | None) -> bool:
    """``vllm_enable_sleep_mode: auto`` for ``recipe`` on GPUs of ``gpu_gb`` (None: no CUDA device).

    Off without colocated vLLM or CUDA (sleep mode is CUDA-only); on without gradient checkpointing or a
    ``max_pixels`` bound (the budget assumes both); else on exactly when the larger of the training and the
    scoring-pass peaks does not fit next to vLLM's share.
    """
    if not (recipe.use_vllm and recipe.vllm_mode == "colocate") or gpu_gb is None:
        return False
    if not recipe.gradient_checkpointing or recipe.max_pixels is None:
        return True
    rows = recipe.rollout_batch_prompts * recipe.num_generations // recipe.world_size
    peak = max(training_peak_gb(arch, params, recipe.world_size, recipe.micro_batch_responses,
                                recipe.max_model_length, recipe.max_completion_length),
               pass_peak_gb(arch, params, recipe.world_size, recipe.micro_batch_responses,
                            recipe.max_completion_length, rows, recipe.max_pixels))
    return sleep_needed(peak, recipe.vllm_gpu_memory_utilization, gpu_gb)


def checkpoint_parameters(model_dir: Path) -> int:
    """Parameters stored in a checkpoint's safetensors files (headers only)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def gpu_memory_gb() -> float | None:
    """Total memory of this process's CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1e9


def resolve_sleep_mode(recipe, model_dir: Path):
    """``recipe`` with ``vllm_enable_sleep_mode: auto`` decided for its checkpoint on this machine's GPU (the run's
    summary records the decision); other values unchanged."""
    if recipe.vllm_enable_sleep_mode != "auto":
        return recipe
    config = json.loads((Path(model_dir) / "config.json").read_text())
    decided = sleep_mode_for(recipe, Architecture.from_config(config), checkpoint_parameters(model_dir),
                             gpu_memory_gb())
    return dataclasses.replace(recipe, vllm_enable_sleep_mode=decided)
