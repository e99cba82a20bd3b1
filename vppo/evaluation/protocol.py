"""The evaluation protocol of PROTOCOL.md section 5 as pure functions (no lmms-eval, no torch).

- :data:`PROTOCOL_SAMPLING`: temperature 1.0, top_p 1.0, top_k 50, 2048 new tokens, 8 samples per question.
- :func:`prepare_image`: RGB, downscale if w*h > 768*768, upscale if w*h < 32*32, each side >= 28.
- :func:`parse_sharegpt_row`: the stored prompt text and answer of one VPPO-Eval row, untouched.
- :func:`score_responses`: every response graded by :func:`vppo.reward.grade` (last ``\\boxed{}``, mathruler).
- :func:`avg_at_k` / :func:`avg_at_k_stderr`: total correct / total samples, and the per-question std / sqrt(n).
- :func:`benchmark_average`: the paper's Avg over benchmarks and its standard error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from PIL import Image

MAX_PIXELS = 768 * 768
MIN_PIXELS = 32 * 32
MIN_SIDE = 28


@dataclass(frozen=True)
class Sampling:
    """Generation parameters of one evaluation run; recorded next to every number."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 2048
    repetition_penalty: float = 1.0
    n: int = 8

    def as_dict(self) -> dict:
        return asdict(self)


PROTOCOL_SAMPLING = Sampling()


def resized_size(width: int, height: int) -> tuple[int, int]:
    """Target (w, h) under the protocol bounds, aspect ratio kept; each side at least 28 px."""
    pixels = width * height
    scale = 1.0
    if pixels > MAX_PIXELS:
        scale = math.sqrt(MAX_PIXELS / pixels)
    elif pixels < MIN_PIXELS:
        scale = math.sqrt(MIN_PIXELS / pixels)
    new_w, new_h = max(int(width * scale), 1), max(int(height * scale), 1)
    return max(new_w, MIN_SIDE), max(new_h, MIN_SIDE)


def prepare_image(image: Image.Image) -> Image.Image:
    """The image as the model sees it: RGB, resized into the protocol's pixel bounds."""
    image = image.convert("RGB")
    size = resized_size(*image.size)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


_USER_ROLES = ("user", "human")
_ASSISTANT_ROLES = ("assistant", "gpt")


def _turns(row: dict) -> list[tuple[str, str]]:
    turns = row.get("conversations", row.get("messages"))
    if not isinstance(turns, list):
        raise ValueError("row has neither 'conversations' nor 'messages' (a list of turns)")
    out = []
    for turn in turns:
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if not isinstance(role, str) or not isinstance(text, str):
            raise ValueError(f"turn {turn!r} lacks a string role ('from'/'role') or text ('value'/'content')")
        out.append((role, text))
    return out


def parse_sharegpt_row(row: dict) -> tuple[str, str]:
    """(prompt text exactly as stored, answer) of a ShareGPT row; raises ``ValueError`` naming the field."""
    turns = _turns(row)
    prompts = [text for role, text in turns if role in _USER_ROLES]
    answers = [text for role, text in turns if role in _ASSISTANT_ROLES]
    if not prompts:
        raise ValueError("row has no user turn")
    if not answers:
        raise ValueError("row has no assistant turn (the answer)")
    return prompts[0], answers[-1].strip()


@dataclass(frozen=True)
class ScoredQuestion:
    """One question's k responses graded: ``correct[i]`` is 0/1 for ``responses[i]``."""

    responses: list[str]
    extracted: list[str | None]
    correct: list[int]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0


def score_responses(responses: Sequence[str], answer: str) -> ScoredQuestion:
    from vppo.reward import grade  # mathruler pulls in sympy: only where responses are graded

    grades = [grade(r, answer) for r in responses]
    return ScoredQuestion(list(responses), [g.extracted for g in grades], [int(g.accuracy) for g in grades])


def avg_at_k(correct_per_question: Sequence[Sequence[int]]) -> float:
    """Fraction (0-1) of correct samples over all samples of all questions."""
    total = sum(len(c) for c in correct_per_question)
    return sum(sum(c) for c in correct_per_question) / total if total else 0.0


def avg_at_k_stderr(correct_per_question: Sequence[Sequence[int]]) -> float:
    """Standard error (0-1) of the mean of per-question accuracies: sample std (ddof=1) / sqrt(n)."""
    means = [sum(c) / len(c) for c in correct_per_question if len(c)]
    n = len(means)
    if n < 2:
        return 0.0
    mu = sum(means) / n
    var = sum((m - mu) ** 2 for m in means) / (n - 1)
    return math.sqrt(var / n)


def benchmark_average(accuracies: Sequence[float], stderrs: Sequence[float | None]) -> tuple[float, float | None]:
    """The paper's "Avg": the unweighted mean of the benchmark accuracies, with the standard error of that
    mean for independent benchmarks, sqrt(sum se^2) / n (None when any benchmark has no standard error)."""
    n = len(accuracies)
    stderr = None if any(s is None for s in stderrs) else math.sqrt(sum(s * s for s in stderrs)) / n
    return sum(accuracies) / n, stderr
