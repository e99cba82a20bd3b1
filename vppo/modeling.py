"""Loading the policies and processors of every model family (:mod:`vppo.model_families`: Qwen2.5-VL, Qwen3-VL)
the same way on CPU machines, GPUs and the cluster.

transformers 5 builds ``Qwen2_5_VLProcessor`` (and ``Qwen3VLProcessor``) with a video processor that needs
torchvision, which has no working CPU build on our machines. We only ever feed images, so
:class:`ImageOnlyQwen2_5_VLProcessor` and :class:`ImageOnlyQwen3VLProcessor` drop the video half; everything else
(image token expansion, chat template, ``mm_token_type_ids``) is the upstream class's behaviour.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vppo.errors import InputError
from vppo.model_families import (DEFAULT_FAMILY, FAMILIES, FAMILY_BY_PROCESSOR, ModelFamily, family_of_dir,
                                  family_of_model_type)

#: Files a loadable checkpoint directory must contain (weights are checked separately: sharded or not).
REQUIRED_CHECKPOINT_FILES = ("config.json", "tokenizer_config.json")
#: The image processor's settings, under the name transformers 5 saves (first) or the hub checkpoints' name.
PROCESSOR_CONFIG_FILES = ("processor_config.json", "preprocessor_config.json")
#: ``model_type`` values in config.json of the model families this package trains and evaluates
MODEL_TYPES = tuple(f.model_type for f in FAMILIES.values())


class CheckpointError(InputError, FileNotFoundError):
    """A checkpoint directory is missing, partial or not a checkpoint of a supported model family."""


class _ImageOnly:
    """Mixin: the upstream processor without its video processor; saved under the upstream class name."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        out = super().save_pretrained(save_directory, **kwargs)
        # Saved under the upstream class name so AutoProcessor (vLLM, lmms-eval) reloads it on GPU machines.
        upstream = next(base.__name__ for base in type(self).__mro__ if base.__module__.startswith("transformers."))
        for name in ("processor_config.json", "preprocessor_config.json"):
            path = Path(save_directory) / name
            if path.exists():
                data = json.loads(path.read_text())
                if data.get("processor_class") == type(self).__name__:
                    data["processor_class"] = upstream
                    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return out


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (so no torchvision is needed)."""


class ImageOnlyQwen3VLProcessor(_ImageOnly, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without the video processor (so no torchvision is needed)."""


#: Upstream processor class name (``ModelFamily.processor_class``) -> its image-only version.
IMAGE_ONLY_PROCESSORS = {"Qwen2_5_VLProcessor": ImageOnlyQwen2_5_VLProcessor,
                         "Qwen3VLProcessor": ImageOnlyQwen3VLProcessor}


def image_only_processor(family: ModelFamily, image_processor, tokenizer, chat_template=None):
    """The family's image-only processor around ``image_processor`` and ``tokenizer``."""
    return IMAGE_ONLY_PROCESSORS[family.processor_class](image_processor, tokenizer, chat_template=chat_template)


def processor_family(processor) -> ModelFamily:
    """The family of a processor (image-only or upstream class); Qwen2.5-VL for an unknown one."""
    return next((FAMILY_BY_PROCESSOR[cls.__name__] for cls in type(processor).__mro__
                 if cls.__name__ in FAMILY_BY_PROCESSOR), DEFAULT_FAMILY)


def hf_weights_missing(path: str | Path) -> list[str] | None:
    """None if ``path`` holds no HF weights at all, else the pieces a complete checkpoint would add
    (config.json, index shards); an empty list means complete."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if not (index.is_file() or any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        return None
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: unreadable safetensors index ({exc})") from exc
        missing += sorted(s for s in shards if not (path / s).is_file())
    return missing


def verify_checkpoint_dir(path: str | Path) -> Path:
    """Raise :class:`CheckpointError` naming the missing piece unless ``path`` is a complete HF checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    missing = [name for name in REQUIRED_CHECKPOINT_FILES if not (path / name).is_file()]
    weights_missing = hf_weights_missing(path)
    missing += ["*.safetensors"] if weights_missing is None else weights_missing
    if not any((path / name).is_file() for name in PROCESSOR_CONFIG_FILES):
        missing.append(" or ".join(PROCESSOR_CONFIG_FILES) + " (the image processor)")
    if missing:
        raise CheckpointError(f"checkpoint {path}: incomplete, missing {', '.join(dict.fromkeys(missing))}")
    _check_readable(path)
    check_model_family(path)
    return path


def check_model_family(path: str | Path) -> ModelFamily:
    """The family of ``path/config.json``; CheckpointError unless it is one of :mod:`vppo.model_families`
    (another family's checkpoint fails deep inside transformers otherwise)."""
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {config}: unreadable ({exc})") from None
    family = family_of_model_type(model_type)
    if family is None:
        raise CheckpointError(f"checkpoint {config}: field 'model_type' is {model_type!r}, not one of "
                              f"{', '.join(map(repr, MODEL_TYPES))} (this package trains and evaluates "
                              f"{', '.join(f.label for f in FAMILIES.values())} checkpoints only)")
    return family


def _check_readable(path: Path) -> None:
    """A truncated or corrupted weight file or config is bad input here, not a traceback at load time.

    Reading a safetensors header checks that the file covers every tensor it lists (no tensor data is read).
    """
    from safetensors import safe_open

    for name in ("config.json", "tokenizer_config.json"):
        try:
            json.loads((path / name).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"checkpoint {path / name}: not valid JSON ({exc})") from None
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as exc:  # safetensors raises its own SafetensorError (no public base class)
            raise CheckpointError(f"checkpoint {weights}: unreadable weights ({exc})") from None


#: What identifies a checkpoint's behaviour: its weights and its config (names and contents).
_HASHED_FILES = ("*.safetensors", "pytorch_model*.bin", "config.json")


def checkpoint_sha256(checkpoint: str | Path, cache: str | Path | None = None) -> str:
    """The one checkpoint hash every result records: sha256 over weight files and config.json, in name order.

    Hashing 7B weights takes tens of seconds: ``cache`` (a JSON file) remembers the digest per
    (file name, size, mtime), so reruns that write into the same folder skip it.
    """
    from vppo.fileio import file_sha256, write_json_atomic

    root = Path(checkpoint)
    files = sorted({p for pattern in _HASHED_FILES for p in root.glob(pattern) if p.is_file()})
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache_path = Path(cache) if cache else None
    if cache_path and cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text())
            if cached.get("checkpoint") == str(root.resolve()) and cached.get("files") == stamp:
                return cached["sha256"]
        except (json.JSONDecodeError, KeyError):
            pass
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    value = digest.hexdigest()
    if cache_path:
        write_json_atomic(cache_path, {"checkpoint": str(root.resolve()), "files": stamp, "sha256": value})
    return value


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """The family's image-only processor from a checkpoint directory; pixel bounds override the saved ones."""
    return processor_from_dir(verify_checkpoint_dir(path), min_pixels, max_pixels)


def processor_from_dir(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """:func:`load_processor` for a folder that holds the processor files but need not hold weights."""
    if not any((Path(path) / name).is_file() for name in PROCESSOR_CONFIG_FILES):
        raise CheckpointError(f"checkpoint {path}: no image processor settings ({' or '.join(PROCESSOR_CONFIG_FILES)}); "
                              "pass --base BASE_MODEL_DIR where the command takes one")
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    if min_pixels is not None or max_pixels is not None:
        size = dict(image_processor.size)
        size["shortest_edge"] = min_pixels or size["shortest_edge"]
        size["longest_edge"] = max_pixels or size["longest_edge"]
        image_processor.size = size
    chat_template = getattr(tokenizer, "chat_template", None)
    return image_only_processor(family_of_dir(path), image_processor, tokenizer, chat_template=chat_template)


def vision_token_ids(config, tokenizer=None) -> list[int]:
    """Ids of the vision special tokens of a ``config`` of any family (+ the family's tokens the config does not
    name, such as ``<|vision_pad|>``, from ``tokenizer``).

    A response must never contain one: a sampled image or video placeholder makes the next forward pass
    expect vision features that do not exist, and the span marks have no meaning in text.
    """
    family = family_of_model_type(getattr(config, "model_type", None)) or DEFAULT_FAMILY
    ids = {getattr(config, name, None) for name in family.vision_token_fields}
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    ids.update(tokenizer.convert_tokens_to_ids(token) for token in family.extra_vision_tokens if token in vocab)
    return sorted(int(i) for i in ids if i is not None)


def load_policy(path: str | Path, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu"):
    """The family's causal model (vision tower included) from a checkpoint directory."""
    path = verify_checkpoint_dir(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    return model.to(device)


def masked_pixel_values(image_processor, masked_rows: list[list[Image.Image]],
                        image_grid_thw: torch.Tensor) -> torch.Tensor:
    """``pixel_values`` of the masked images, checked to tile exactly like the rollout's ``image_grid_thw``.

    ``masked_rows`` holds each row's masked copies (same sizes as the originals); the result is the processor's
    flat patch tensor for them, in row order, to swap into the rollout's inputs for the masked-image pass.
    """
    flat = [image for images in masked_rows for image in images]
    if not flat:
        raise ValueError("masked-image pass: the rollout batch has no images (VPPO needs image prompts)")
    encoded = image_processor(images=flat, return_tensors="pt")
    grid = encoded["image_grid_thw"]
    if tuple(grid.shape) != tuple(image_grid_thw.shape) or not torch.equal(grid.cpu(), image_grid_thw.cpu()):
        raise ValueError(f"masked-image pass: masked images tile as {grid.tolist()} but the rollout's images as "
                         f"{image_grid_thw.tolist()} (masking must keep every image's size)")
    return encoded["pixel_values"]
