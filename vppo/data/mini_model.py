"""The mini study's model: a small Qwen2.5-VL (the real architecture) taught the grid task only partly.

``vppo fetch-model mini`` builds it offline in about a minute on 2 cores: a byte-level BPE tokenizer trained on
the task's own text (every colour word, number and tag one token), random init, then a short supervised warm
start on :func:`vppo.data.mini_task.reference_response` answers. The warm start is stopped early on purpose
(:data:`WARM_START_STEPS`): the model has learnt the format and part of the perception, so RL starts well above
chance and well below the ceiling, and there is something for RL to learn.

Warm-start questions come from a range of training-split indices that RL never reads (:data:`WARM_START_OFFSET`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from vppo.data import mini_task
from vppo.data.tiny_models import (_right_padded, build_config, build_generation_config, build_processor,
                                   build_tokenizer, fit_responses)
from vppo.rollout import REASONING_INSTRUCTION, encode_prompts, join_prompt_and_response

#: Width of the mini model: head_dim 64 (vLLM's CPU attention accepts it), 4 text layers, 2 vision blocks.
MINI_SHAPE = {"hidden_size": 128, "num_layers": 4, "num_heads": 2, "num_kv_heads": 1, "vision_hidden": 64,
              "vision_mlp": 128, "vision_heads": 2}
WARM_START_STEPS = 200
WARM_START_LR = 1e-3
WARM_START_BATCH = 24
#: Warm-start rows are training-split indices from here on; RL data uses indices below it.
WARM_START_OFFSET = 1_000_000


def tokenizer_corpus(n: int = 2000) -> list[str]:
    """Text the mini tokenizer is trained on: prompts and reference responses of every kind."""
    lines = [REASONING_INSTRUCTION]
    for i in range(n):
        example = mini_task.mini_example("train", WARM_START_OFFSET + i, mini_task.KINDS)
        lines.append(example["problem"] + " " + mini_task.reference_response(example))
    return lines


def warm_start_rows(start: int, n: int) -> list[dict]:
    """Warm-start examples (picture kinds and the text-only control kind, in turn)."""
    return [mini_task.mini_example("train", WARM_START_OFFSET + start + i, mini_task.KINDS) for i in range(n)]


def prompt_text(example: dict) -> str:
    """The user turn as the trainer builds it (problem without placeholder, blank line, instruction)."""
    from vppo.data.train_data import training_prompt

    return training_prompt(example["problem"])


def supervised_fit(model, processor, steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Fit ``model`` in place on reference responses (fresh warm-start rows every step); returns the losses."""
    def make_batch(step: int):
        rows = warm_start_rows(step * batch_size, batch_size)
        prompt = encode_prompts(processor, [prompt_text(r) for r in rows], [[r["image"]] for r in rows])
        ids, mask = _right_padded(processor.tokenizer, [mini_task.reference_response(r) + "<|im_end|>" for r in rows])
        return join_prompt_and_response(prompt, ids, mask)

    return fit_responses(model, make_batch, steps, lr, seed)


def build_mini_model(out_dir: str | Path, seed: int = 0, warm_start_steps: int = WARM_START_STEPS) -> Path:
    """Write the mini checkpoint (weights, config, tokenizer, processor, ``vppo_tiny.json``) to ``out_dir``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vppo.data.tiny_models import write_hub_processor_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = dict(MINI_SHAPE)
    tokenizer = build_tokenizer(seed, corpus=tokenizer_corpus())
    config = build_config(tokenizer, hidden_size=shape.pop("hidden_size"), num_layers=shape.pop("num_layers"), **shape)
    torch.manual_seed(seed)
    random.seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = build_generation_config(tokenizer)
    processor = build_processor(tokenizer)
    losses = supervised_fit(model, processor, warm_start_steps, WARM_START_LR, WARM_START_BATCH, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_hub_processor_files(out_dir, processor)
    info = {"builder": "vppo.data.mini_model", "seed": seed, "shape": MINI_SHAPE,
            "warm_start": {"steps": warm_start_steps, "lr": WARM_START_LR, "batch_size": WARM_START_BATCH,
                           "rows_from_index": WARM_START_OFFSET, "loss_first": round(losses[0], 4) if losses else None,
                           "loss_last": round(losses[-1], 4) if losses else None}}
    (out_dir / "vppo_tiny.json").write_text(json.dumps(info) + "\n")
    return out_dir
