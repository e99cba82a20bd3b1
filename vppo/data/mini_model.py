"""The mini study's model: a small Qwen2.5-VL (the real architecture) taught the grid task only partly.

``vppo fetch-model mini`` builds it offline in about a minute on 2 cores: a byte-level BPE tokenizer trained on
the task's own text (every colour word, number and tag one token), random init, then a short supervised warm
start on :func:`vppo.data.mini_task.reference_response` answers. The warm start is stopped early on purpose
(:data:`WARM_START_STEPS`): the model has learnt the format and part of the perception, so RL starts well above
chance and well below the ceiling, and there is something for RL to learn.

Warm-start questions come from a range of training-split indices that RL never reads (:data:`WARM_START_OFFSET`).

``family="qwen3-vl"`` (``vppo fetch-model mini-qwen3vl``) builds the same model in the Qwen3-VL architecture: same
widths, tokenizer, warm start and seed; its pictures have the family's cells (:func:`vppo.data.mini_task.cell_size`)
and its processor the family's evaluation bounds (:data:`SAVED_PROCESSOR_BOUNDS`), so training and evaluation see the
same pixels.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from vppo.data import mini_task
from vppo.data.tiny_models import (_right_padded, build_generation_config, build_processor, build_tokenizer,
                                   family_builders, fit_responses)
from vppo.model_families import FAMILIES, QWEN2_5_VL, QWEN3_VL, ModelFamily
from vppo.rollout import REASONING_INSTRUCTION, encode_prompts, join_prompt_and_response

#: Width of the mini model: head_dim 64 (vLLM's CPU attention accepts it), 4 text layers, 2 vision blocks.
MINI_SHAPE = {"hidden_size": 128, "num_layers": 4, "num_heads": 2, "num_kv_heads": 1, "vision_hidden": 64,
              "vision_mlp": 128, "vision_heads": 2}
WARM_START_STEPS = 200
WARM_START_LR = 1e-3
WARM_START_BATCH = 24
#: Warm-start rows are training-split indices from here on; RL data uses indices below it.
WARM_START_OFFSET = 1_000_000
#: Family key -> the saved processor's pixel bounds (training reads them; evaluation always uses the family's
#: protocol bounds). Qwen2.5-VL: the tiny token budget (4-16 tokens), as the committed study was built; an 84 px
#: picture lies inside both. Qwen3-VL: its protocol bounds, since its 288 px pictures exceed the tiny budget.
SAVED_PROCESSOR_BOUNDS = {QWEN2_5_VL.key: {}, QWEN3_VL.key: QWEN3_VL.processor_bounds.as_dict()}


def tokenizer_corpus(n: int = 2000) -> list[str]:
    """Text the mini tokenizer is trained on: prompts and reference responses of every kind."""
    lines = [REASONING_INSTRUCTION]
    for i in range(n):
        example = mini_task.mini_example("train", WARM_START_OFFSET + i, mini_task.KINDS)
        lines.append(example["problem"] + " " + mini_task.reference_response(example))
    return lines


def warm_start_rows(start: int, n: int, cell: int = mini_task.CELL) -> list[dict]:
    """Warm-start examples (picture kinds and the text-only control kind, in turn; cells of ``cell`` px)."""
    return [mini_task.mini_example("train", WARM_START_OFFSET + start + i, mini_task.KINDS, cell) for i in range(n)]


def prompt_text(example: dict) -> str:
    """The user turn as the trainer builds it (problem without placeholder, blank line, instruction)."""
    from vppo.data.train_data import training_prompt

    return training_prompt(example["problem"])


def supervised_fit(model, processor, steps: int, lr: float, batch_size: int, seed: int,
                   cell: int = mini_task.CELL) -> list[float]:
    """Fit ``model`` in place on reference responses (fresh warm-start rows every step); returns the losses."""
    def make_batch(step: int):
        rows = warm_start_rows(step * batch_size, batch_size, cell)
        prompt = encode_prompts(processor, [prompt_text(r) for r in rows], [[r["image"]] for r in rows])
        ids, mask = _right_padded(processor.tokenizer, [mini_task.reference_response(r) + "<|im_end|>" for r in rows])
        return join_prompt_and_response(prompt, ids, mask)

    return fit_responses(model, make_batch, steps, lr, seed)


def build_mini_model(out_dir: str | Path, seed: int = 0, warm_start_steps: int = WARM_START_STEPS,
                     family: str = QWEN2_5_VL.key) -> Path:
    """Write the mini checkpoint of ``family`` (weights, config, tokenizer, processor, ``vppo_tiny.json``) to
    ``out_dir``."""
    from vppo.data.tiny_models import write_hub_processor_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_family: ModelFamily = FAMILIES[family]
    config_builder, model_class = family_builders(model_family)
    cell = mini_task.cell_size(model_family)
    shape = dict(MINI_SHAPE)
    tokenizer = build_tokenizer(seed, corpus=tokenizer_corpus())
    config = config_builder(tokenizer, hidden_size=shape.pop("hidden_size"), num_layers=shape.pop("num_layers"),
                            **shape)
    torch.manual_seed(seed)
    random.seed(seed)
    model = model_class(config).eval()
    model.generation_config = build_generation_config(tokenizer)
    processor = build_processor(tokenizer, family=model_family, **SAVED_PROCESSOR_BOUNDS[family])
    losses = supervised_fit(model, processor, warm_start_steps, WARM_START_LR, WARM_START_BATCH, seed, cell)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_hub_processor_files(out_dir, processor, model_family)
    info = {"builder": "vppo.data.mini_model", "seed": seed, "shape": MINI_SHAPE,
            "warm_start": {"steps": warm_start_steps, "lr": WARM_START_LR, "batch_size": WARM_START_BATCH,
                           "rows_from_index": WARM_START_OFFSET, "loss_first": round(losses[0], 4) if losses else None,
                           "loss_last": round(losses[-1], 4) if losses else None}}
    if model_family is not QWEN2_5_VL:  # the committed Qwen2.5-VL study's file names none
        info.update(family=model_family.key, cell_px=cell)
    (out_dir / "vppo_tiny.json").write_text(json.dumps(info) + "\n")
    return out_dir
