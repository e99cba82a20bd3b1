"""Prompt building and per-token log-probs for Qwen2.5-VL with plain transformers.

These are the engine-free versions of what a trainer does after a rollout: encode prompt + response with
the images, run the policy once, and read the log-prob of every response token. The masked-image pass is
the same call with masked images (``vppo.masking``). Used by the foundation tests, ``vppo analyze`` and the
benchmark scripts; the trainer does the same through TRL.

Shapes: B responses, P prompt tokens (left-padded), T response tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

IMAGE_PLACEHOLDER = "<image>"
#: docs/protocol.md section 4: appended to every training question.
REASONING_INSTRUCTION = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> "
    "tags. Then, provide your final answer enclosed within \\boxed{}."
)


def user_content(text: str, n_images: int) -> list[dict]:
    """Chat content parts for ``text``: each ``<image>`` placeholder becomes an image part, in place.

    Text without placeholders gets its images first (the convention of Qwen2.5-VL datasets).
    """
    pieces = text.split(IMAGE_PLACEHOLDER)
    n_placeholders = len(pieces) - 1
    if n_placeholders not in (0, n_images):
        raise ValueError(f"prompt has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders but {n_images} images")
    if n_placeholders == 0:
        return [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    content: list[dict] = []
    for i, piece in enumerate(pieces):
        if i:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def content_text(content: str | list[dict]) -> str:
    """The text of chat content with ``<image>`` where each image part stands (the inverse of :func:`user_content`)."""
    if isinstance(content, str):
        return content
    return "".join(IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] or "" for part in content)


def chat_prompt(processor, text: str, n_images: int) -> str:
    """The ChatML prompt string (generation prompt included) for one user turn."""
    messages = [{"role": "user", "content": user_content(text, n_images)}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(processor, texts: list[str], images: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch with ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``."""
    prompts = [chat_prompt(processor, t, len(imgs)) for t, imgs in zip(texts, images)]
    flat_images = [img for imgs in images for img in imgs]
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=prompts, images=flat_images or None, return_tensors="pt", padding=True,
                          return_mm_token_type_ids=True))


@dataclass
class ScoredBatch:
    """Prompt + response tensors ready for a forward pass."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, mm_token_type_ids [B, P+T]; vision tensors
    response_mask: torch.Tensor  # [B, T] 0/1
    response_ids: torch.Tensor  # [B, T]


def join_prompt_and_response(prompt: dict[str, torch.Tensor], response_ids: torch.Tensor,
                             response_mask: torch.Tensor) -> ScoredBatch:
    """Append right-padded responses to a left-padded prompt batch (one response per prompt row)."""
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], response_ids], dim=1)
    inputs["attention_mask"] = torch.cat([prompt["attention_mask"], response_mask.to(prompt["attention_mask"].dtype)], 1)
    # Response tokens are text (type 0): without this tensor transformers 5 silently uses 1-D positions.
    inputs["mm_token_type_ids"] = torch.cat(
        [prompt["mm_token_type_ids"], torch.zeros_like(response_ids, dtype=prompt["mm_token_type_ids"].dtype)], 1)
    return ScoredBatch(inputs=inputs, response_mask=response_mask, response_ids=response_ids)


def repeat_prompt_batch(prompt: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Repeat every prompt row ``n`` times (rows r*n .. r*n+n-1 share prompt r), vision tensors included."""
    out = {k: v.repeat_interleave(n, dim=0) for k, v in prompt.items() if k not in ("pixel_values", "image_grid_thw")}
    if "image_grid_thw" in prompt:
        grid = prompt["image_grid_thw"]
        patches = grid.prod(dim=-1).tolist()
        chunks = list(torch.split(prompt["pixel_values"], patches))
        # One image per prompt row is the common case; rows with several images keep theirs together.
        per_row = len(chunks) // prompt["input_ids"].shape[0]
        rows = [chunks[i * per_row:(i + 1) * per_row] for i in range(prompt["input_ids"].shape[0])]
        grids = [grid[i * per_row:(i + 1) * per_row] for i in range(prompt["input_ids"].shape[0])]
        out["pixel_values"] = torch.cat([c for row in rows for _ in range(n) for c in row])
        out["image_grid_thw"] = torch.cat([g for g in grids for _ in range(n)])
    return out


def split_generation(sequences: torch.Tensor, prompt_len: int, eos_ids: list[int], pad_id: int):
    """Response ids and 0/1 mask from ``generate`` output: tokens up to and including the first EOS."""
    response = sequences[:, prompt_len:]
    is_eos = torch.zeros_like(response, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= response == eos
    # Position of the first EOS (or T when none): tokens after it are padding.
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], response.shape[1], dtype=torch.long))
    positions = torch.arange(response.shape[1], device=response.device).unsqueeze(0)
    mask = (positions <= first_eos.unsqueeze(1)).long()
    return response.masked_fill(mask == 0, pad_id), mask


def response_logits(model, batch: ScoredBatch) -> torch.Tensor:
    """The model's logits at every response position, [B, T, V] in the model's dtype (unscaled)."""
    outputs = model(**batch.inputs, use_cache=False)
    t = batch.response_ids.shape[1]
    return outputs.logits[:, -t - 1:-1, :]  # the logit at i predicts token i+1


def response_logprobs(model, batch: ScoredBatch, temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | prompt, images, y_<t) for every response token: [B, T], zero on padding."""
    logits = response_logits(model, batch).float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    return logp * batch.response_mask
