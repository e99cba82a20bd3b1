"""What our lmms-eval model adapters share: turning lmms-eval requests into generation jobs and back.

lmms-eval's evaluator hands a model ``[req] * req.repeats``: the SAME ``Instance`` object k times in a row.
:func:`group_repeats` folds those runs into one job with ``n = k`` so a backend can draw the k samples from
one prompt (``num_return_sequences`` in transformers, ``SamplingParams(n=k)`` in vLLM: one prefill, not k);
:func:`fan_out` puts the k responses back in the order the evaluator expects.

Requests come in both of lmms-eval's shapes: chat ``(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)``
and simple ``(ctx, gen_kwargs, doc_to_visual, doc_id, task, split)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from vppo.evaluation.protocol import PROTOCOL_SAMPLING, Sampling
from vppo.rollout import IMAGE_PLACEHOLDER


@dataclass
class GenerationJob:
    """One prompt to sample ``n`` responses from."""

    text: str  # the user turn with "<image>" where each image goes (vppo.rollout's convention)
    images: list[Image.Image]
    sampling: Sampling  # sampling.n is the number of responses wanted
    stop: list[str] = field(default_factory=list)
    key: tuple = ()  # (task, split, doc_id): seeds and logs


def group_repeats(requests: Sequence[Any]) -> list[tuple[Any, int]]:
    """Runs of the same request object -> ``[(request, run length), ...]`` in order."""
    groups: list[tuple[Any, int]] = []
    for req in requests:
        if groups and groups[-1][0] is req:
            groups[-1] = (req, groups[-1][1] + 1)
        else:
            groups.append((req, 1))
    return groups


def fan_out(groups: Sequence[tuple[Any, int]], outputs: Sequence[Sequence[Any]]) -> list[Any]:
    """Flatten per-group outputs back to one output per original request; checks every count."""
    if len(outputs) != len(groups):
        raise RuntimeError(f"backend returned {len(outputs)} results for {len(groups)} prompts")
    flat: list[Any] = []
    for (req, count), out in zip(groups, outputs):
        if len(out) != count:
            raise RuntimeError(f"backend returned {len(out)} samples for a prompt that asked for {count}")
        flat.extend(out)
    return flat


def messages_to_text(messages: list[dict]) -> tuple[str, list[Image.Image]]:
    """lmms-eval chat messages (one user turn) -> (text with ``<image>`` in place, images in order)."""
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or any(m.get("role") not in ("user", "system") for m in messages):
        raise ValueError(f"expected one user turn, got roles {[m.get('role') for m in messages]}")
    if any(m.get("role") == "system" for m in messages):
        raise ValueError("the protocol's system prompt comes from the chat template; a task may not set one")
    text, images = [], []
    content = users[0]["content"]
    for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
        kind = part.get("type")
        if kind == "text":
            text.append(part["text"])
        elif kind == "image":
            image = part.get("url", part.get("image"))
            if isinstance(image, str):
                with Image.open(image) as img:
                    image = img.convert("RGB")
            if not isinstance(image, Image.Image):
                raise ValueError(f"image part holds a {type(image).__name__}, not a PIL image or a path")
            text.append(IMAGE_PLACEHOLDER)
            images.append(image)
        else:
            raise ValueError(f"unsupported content part {kind!r} (images and text only)")
    return "".join(text), images


def sampling_from_gen_kwargs(gen_kwargs: dict, n: int, default_max_new_tokens: int) -> Sampling:
    """The task's generation kwargs as a :class:`Sampling`; the task's ``max_new_tokens`` wins over the model's.

    Unlike lmms-eval's vLLM backend (``max(task, model)``), the model argument is only the fallback.
    A value the task does not set is the protocol's (:data:`PROTOCOL_SAMPLING`).
    """
    g, p = dict(gen_kwargs or {}), PROTOCOL_SAMPLING
    if g.get("do_sample") is False or float(g.get("temperature", p.temperature)) == 0.0:
        raise ValueError(f"greedy decoding requested ({g}); the avg@k protocol samples (do_sample, temperature > 0)")
    return Sampling(temperature=float(g.get("temperature", p.temperature)), top_p=float(g.get("top_p", p.top_p)),
                    top_k=int(g.get("top_k", p.top_k)),
                    max_new_tokens=int(g.get("max_new_tokens") or default_max_new_tokens),
                    repetition_penalty=float(g.get("repetition_penalty", p.repetition_penalty)), n=n)


def build_job(request: Any, task_dict: dict, n: int, default_max_new_tokens: int) -> GenerationJob:
    """A :class:`GenerationJob` from one lmms-eval ``Instance`` (chat or simple argument shape)."""
    args = request.args
    if callable(args[1]):  # chat: (ctx, doc_to_messages, gen_kwargs, doc_id, task, split)
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = args[:6]
        text, images = messages_to_text(doc_to_messages(task_dict[task][split][doc_id]))
    else:  # simple: (ctx, gen_kwargs, doc_to_visual, doc_id, task, split)
        ctx, gen_kwargs, doc_to_visual, doc_id, task, split = args[:6]
        visuals = doc_to_visual(task_dict[task][split][doc_id]) if doc_to_visual else []
        text, images = ctx, [v for v in (visuals or []) if v is not None]
    stop = [s for s in (gen_kwargs or {}).get("until") or [] if s]
    return GenerationJob(text=text, images=list(images), stop=stop, key=(task, split, doc_id),
                         sampling=sampling_from_gen_kwargs(gen_kwargs, n, default_max_new_tokens))


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the first stop string (the task's ``until``; empty under the protocol)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
