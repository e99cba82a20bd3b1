"""The model families the package trains and evaluates: every fact that differs between them, written once.

A family is what a checkpoint's ``config.json`` names as ``model_type``. Everything above this floor asks the
family for its numbers instead of assuming Qwen2.5-VL's: the vision patch and merge sizes (so the resize factor
of the processor and the masking square of the dependency pass), the processor's default pixel bounds (the
evaluation protocol's), the config fields naming the vision special tokens (kept out of every rollout), and the
transformers classes that build the config, the model and the processor (by name: this module stays torch-free,
so the workflow and the config schema can read it).

Adding a family: one :class:`ModelFamily` in :data:`FAMILIES` (+ its image-only processor class in
``vppo/modeling.py`` and its tiny build in ``vppo/data/tiny_models.py``; docs/design.md lists the files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vppo.eval_images import PROCESSOR_BOUNDS, PixelBounds


@dataclass(frozen=True)
class ModelFamily:
    """One vision-language architecture: its key (``--config model_family=...``), config ``model_type`` and
    the numbers and class names the package needs from it."""

    key: str  # the name users write (config key model_family, fetch-model sources)
    model_type: str  # config.json "model_type" of its checkpoints
    label: str  # in messages and model cards
    patch_size: int  # ViT patch side in pixels
    merge_size: int  # patches merged per side into one LLM vision token
    temporal_patch_size: int
    #: The processor's default [min_pixels, max_pixels]: the evaluation protocol's bounds for this family.
    processor_bounds: PixelBounds
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    config_class: str  # transformers class names
    model_class: str
    processor_class: str
    video_processor_class: str  # named in a hub checkpoint's video_preprocessor_config.json (vLLM reads it)
    #: Config fields naming the vision special tokens (a rollout must never sample one).
    vision_token_fields: tuple[str, ...] = ("image_token_id", "video_token_id", "vision_start_token_id",
                                            "vision_end_token_id")
    #: Vision tokens the config does not name, looked up in the tokenizer.
    extra_vision_tokens: tuple[str, ...] = ("<|vision_pad|>",)

    @property
    def resize_factor(self) -> int:
        """Image sides are rounded to multiples of this (one merged vision token is a square of this side)."""
        return self.patch_size * self.merge_size

    @property
    def masking_square(self) -> int:
        """Side in pixels of the squares patch masking blackens: one ViT patch of the model input, as the
        official code's 14 px squares are for Qwen2.5-VL (``vppo.masking.patch_blacken``)."""
        return self.patch_size

    def masking_params(self, strategy: str) -> dict:
        """Keyword arguments of ``vppo.masking.mask_image`` that follow the family (only patch masking has any)."""
        return {"patch_size": self.masking_square} if strategy == "patch" else {}


#: CLIP's normalisation (Qwen2.5-VL's image processor) and the plain 0.5 one (Qwen3-VL's).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

QWEN2_5_VL = ModelFamily(
    key="qwen2.5-vl", model_type="qwen2_5_vl", label="Qwen2.5-VL", patch_size=14, merge_size=2,
    temporal_patch_size=2, processor_bounds=PROCESSOR_BOUNDS, image_mean=CLIP_MEAN, image_std=CLIP_STD,
    config_class="Qwen2_5_VLConfig", model_class="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor", video_processor_class="Qwen2VLVideoProcessor")
#: Qwen3-VL: 16 px patches (so 32 px per merged token), 0.5 normalisation, and the bounds of the hub checkpoints'
#: preprocessor_config.json (shortest_edge 65536 = 256*256, longest_edge 16777216 = 4096*4096).
QWEN3_VL = ModelFamily(
    key="qwen3-vl", model_type="qwen3_vl", label="Qwen3-VL", patch_size=16, merge_size=2, temporal_patch_size=2,
    processor_bounds=PixelBounds(min_pixels=256 * 256, max_pixels=4096 * 4096), image_mean=HALF, image_std=HALF,
    config_class="Qwen3VLConfig", model_class="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor", video_processor_class="Qwen3VLVideoProcessor")

#: Family key -> family; the first is the default (the paper's).
FAMILIES: dict[str, ModelFamily] = {f.key: f for f in (QWEN2_5_VL, QWEN3_VL)}
DEFAULT_FAMILY = QWEN2_5_VL
FAMILY_BY_MODEL_TYPE: dict[str, ModelFamily] = {f.model_type: f for f in FAMILIES.values()}
FAMILY_BY_PROCESSOR: dict[str, ModelFamily] = {f.processor_class: f for f in FAMILIES.values()}


def get_family(key: str) -> ModelFamily:
    """The family of a key (``qwen2.5-vl``) or a config ``model_type`` (``qwen2_5_vl``); ValueError naming the
    valid keys otherwise."""
    family = FAMILIES.get(key) or FAMILY_BY_MODEL_TYPE.get(key)
    if family is None:
        raise ValueError(f"unknown model family {key!r}; valid: {', '.join(FAMILIES)}")
    return family


def family_of_model_type(model_type: str | None) -> ModelFamily | None:
    """The family whose checkpoints carry this ``model_type``, or None."""
    return FAMILY_BY_MODEL_TYPE.get(model_type or "")


def family_of_dir(path: str | Path) -> ModelFamily:
    """The family of a checkpoint (config.json ``model_type``) or of a processor-only folder (the saved
    ``processor_class``); Qwen2.5-VL when neither names one. Unreadable files are the loader's to report."""
    path = Path(path)
    try:
        family = family_of_model_type(json.loads((path / "config.json").read_text()).get("model_type"))
        if family is not None:
            return family
    except (OSError, ValueError, AttributeError):
        pass
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            family = FAMILY_BY_PROCESSOR.get(json.loads((path / name).read_text()).get("processor_class"))
        except (OSError, ValueError, AttributeError):
            continue
        if family is not None:
            return family
    return DEFAULT_FAMILY
