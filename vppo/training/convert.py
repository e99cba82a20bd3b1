"""``vppo convert TRAINER_OUTPUT_DIR --out HF_DIR [--base BASE_MODEL_DIR]``: a standalone HF checkpoint.

Accepts what the trainer saves (see :mod:`vppo.training.checkpoints`): an HF directory (``OUT_DIR/final`` or
a ``checkpoint-N``), a DeepSpeed ZeRO checkpoint (``latest`` + ``global_stepN/``; needs the ``deepspeed``
package), or FSDP sharded state (``pytorch_model_fsdp_0/``, read with torch.distributed.checkpoint). A
``vppo train`` OUT_DIR is accepted too (its ``final/`` is used). Config and generation config come from the
source, or from ``--base`` where the source lacks them; tokenizer and processor come from ``--base`` when it is
given (training changes neither, and the checkpoint must encode images as the base model does), else from
the source.

The result is verified before it is published: it is reloaded and its logits on a fixed image + prompt are
compared with the source model's. It is written to a temp directory and renamed; an existing finished
HF_DIR is never overwritten; a temp directory left by a killed conversion is removed by the next one. Bad
input (a missing or partial source, another model family, an existing HF_DIR, a place that cannot take the
files) is one line on stderr and exit 2. ``HF_DIR/vppo_convert.json`` records source, format, weights sha256,
the max logit difference and the facts of the model card, ``HF_DIR/README.md`` (:mod:`vppo.training.model_card`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from vppo.errors import OutputExistsError
from vppo.fileio import publish_dir, require_writable, write_json_atomic

MARKER = "vppo_convert.json"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
#: allowed |logit difference| relative to the largest |logit|: the weights are copied, not cast, so any
#: difference beyond float noise means a wrong or missing tensor
LOGIT_TOLERANCE = 1e-4


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="trainer output: HF dir, checkpoint-N, DeepSpeed or FSDP state")
    parser.add_argument("--out", type=Path, required=True, help="where the standalone HF checkpoint goes")
    parser.add_argument("--base", type=Path, default=None,
                        help="base model dir: supplies tokenizer and processor, and config/generation config "
                             "when the source lacks them")
    parser.add_argument("--base-id", default=None,
                        help="what the model card names as the base model (a Hub id becomes its base_model metadata)")


def _clean_key(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def _deepspeed_state_dict(source: Path) -> dict:
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as exc:
        from vppo.modeling import CheckpointError

        raise CheckpointError(f"{source}: a DeepSpeed ZeRO checkpoint; converting it needs the deepspeed package "
                              "(installed on the cluster, `pip install deepspeed`)") from exc
    return get_fp32_state_dict_from_zero_checkpoint(str(source))


def _fsdp_state_dict(source: Path) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = sorted(source.glob("pytorch_model_fsdp_*"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(folder), os.path.join(tmp, "model.pt"))
        state = torch.load(os.path.join(tmp, "model.pt"), map_location="cpu", weights_only=True)
    return state.get("model", state)  # accelerate nests the model state under "model"


def _first_with(name: str, *dirs: Path | None) -> Path | None:
    return next((d for d in dirs if d is not None and (d / name).is_file()), None)


def load_source_model(source: Path, base: Path | None):
    """(model in eval mode, weights format, directory that supplied the config)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vppo.modeling import CheckpointError, check_model_family
    from vppo.training.checkpoints import weights_format

    fmt = weights_format(source)
    config_dir = _first_with("config.json", source, base)
    if config_dir is not None:
        check_model_family(config_dir)
    if fmt == "hf":
        try:
            return AutoModelForImageTextToText.from_pretrained(source, dtype="auto").eval(), fmt, source
        except Exception as exc:  # truncated shards and the like surface as many exception types
            raise CheckpointError(f"{source}: HF weights do not load ({exc})") from exc
    if config_dir is None:
        raise CheckpointError(f"{source}: {fmt} weights without config.json; pass --base BASE_MODEL_DIR")
    state = _deepspeed_state_dict(source) if fmt == "deepspeed" else _fsdp_state_dict(source)
    state = {_clean_key(k): v for k, v in state.items()}
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForImageTextToText.from_config(config, dtype=next(iter(state.values())).dtype)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    tied = {k for k in missing if k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False)}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(f"{source}: {fmt} state does not match {config_dir}/config.json: missing "
                              f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                              f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    model.load_state_dict(state, strict=not tied)
    return model.eval(), fmt, config_dir


#: Processor files a checkpoint ships that our image-only processor does not write back: vLLM builds its
#: Qwen2.5-VL processor (images and videos) from them and refuses a checkpoint without the video half.
SHIPPED_PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json")


def _copy_missing_processor_files(processor_dir: Path, out: Path) -> None:
    for name in SHIPPED_PROCESSOR_FILES:
        if (processor_dir / name).is_file() and not (out / name).exists():
            shutil.copyfile(processor_dir / name, out / name)


def fixed_logits(model, processor):
    """Logits of ``model`` on a fixed synthetic picture and question (the verification input)."""
    import torch

    from vppo.data.train_data import synthetic_example, training_prompt
    from vppo.rollout import encode_prompts

    row, image = synthetic_example(0, seed=0)
    inputs = encode_prompts(processor, [training_prompt(row["problem"])], [[image]])
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits.float()


def convert(source: Path, out: Path, base: Path | None = None, base_id: str | None = None) -> dict:
    """Write and verify the standalone checkpoint; returns the record written to ``vppo_convert.json``."""
    from transformers import GenerationConfig

    from vppo.modeling import CheckpointError, checkpoint_sha256, load_policy, processor_from_dir
    from vppo.model_families import family_of_model_type
    from vppo.training.model_card import training_facts, write_card

    source, out = Path(source), Path(out)
    if (source / "train_summary.json").is_file() and (source / "final").is_dir():
        source = source / "final"
    if not source.is_dir():
        raise CheckpointError(f"checkpoint {source}: no such directory (the trainer output to convert)")
    if (out / MARKER).is_file():
        raise OutputExistsError(f"{out}: already holds a finished conversion ({MARKER}); remove it to convert again")
    if out.is_symlink() or (out.exists() and not out.is_dir()) or (out.is_dir() and any(out.iterdir())):
        raise OutputExistsError(f"{out}: exists and is not a finished conversion (no {MARKER}); remove it first")
    require_writable(out, "--out")  # before loading (and, for sharded state, gathering) the weights
    model, fmt, config_dir = load_source_model(source, base)
    # Training changes neither tokenizer nor processor: with a base, its processor is the one to ship, whatever
    # image bounds a trainer output may have saved (evaluation must encode images as for the base model).
    processor_dir = _first_with("tokenizer_config.json", base, source)
    if processor_dir is None:
        raise CheckpointError(f"{source}: no tokenizer/processor files; pass --base BASE_MODEL_DIR")
    processor = processor_from_dir(processor_dir)

    with publish_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        processor.save_pretrained(tmp)
        processor.tokenizer.save_pretrained(tmp)
        _copy_missing_processor_files(processor_dir, tmp)
        generation_dir = _first_with("generation_config.json", source, base)
        if generation_dir is not None:
            GenerationConfig.from_pretrained(generation_dir).save_pretrained(tmp)
        reloaded = load_policy(tmp, dtype="auto").eval()
        reference = fixed_logits(model, processor)
        difference = float((fixed_logits(reloaded, processor_from_dir(tmp)) - reference).abs().max())
        # `not <=` so that a NaN difference (a broken conversion) fails too
        if not difference <= LOGIT_TOLERANCE * max(1.0, float(reference.abs().max())):
            raise CheckpointError(f"{out}: the converted checkpoint's logits differ from {source}'s by {difference}")
        record = {
            "source": str(source), "source_format": fmt, "config_from": str(config_dir),
            "processor_from": str(processor_dir), "base": None if base is None else str(base),
            "checkpoint_sha256": checkpoint_sha256(tmp), "max_logit_diff": difference,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "card": training_facts(source, base_id or (None if base is None else str(base)),
                                   getattr(family_of_model_type(model.config.model_type), "key", None)),
        }
        write_card(tmp, record["card"])  # the Hub's README.md; `vppo card` adds the scores once evaluated
        write_json_atomic(tmp / MARKER, record)
    return record


def run(args: argparse.Namespace) -> int:
    # bad input: InputError, one line and exit 2 (vppo.cli)
    record = convert(args.source, args.out, args.base, args.base_id)
    print(f"vppo convert: {args.out} written ({record['source_format']} -> safetensors, "
          f"max logit difference {record['max_logit_diff']:.3g})")
    return 0
