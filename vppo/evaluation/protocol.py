"""The evaluation protocol (avg@8 as PAPO-Eval runs it) as pure functions (no lmms-eval, no torch).

- :data:`PROTOCOL_SAMPLING`: temperature 1.0, top_p 1.0, top_k 50, 2048 new tokens, 8 samples per question.
- the images as the model sees them: :mod:`vppo.eval_images` (a lower floor: the tiny-model builder and the
  analysis use them too).
- :func:`score_responses`: every response graded by :func:`vppo.reward.grade` (last ``\\boxed{}``, mathruler);
  a row without an answer is wrong whatever the response.
- :func:`avg_at_k` / :func:`avg_at_k_stderr`: total correct / total samples, and the per-question std / sqrt(n).
- :func:`benchmark_average`: the unweighted mean over benchmarks and its standard error;
  :func:`paper_average`: the paper's Avg, that mean over the paper's Avg set only (``vppo.catalog.PAPER_AVG``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from vppo.catalog import PAPER_AVG


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


@dataclass(frozen=True)
class EngineLimits:
    """The evaluation engine's bounds on one prompt (PAPO-Eval's vLLM run): context = cutoff 9216 + 2048 new
    tokens, up to 10 images (MMMU-Pro has questions with 7; a lower limit makes vLLM refuse those rows)."""

    max_model_len: int = 11264
    max_images_per_prompt: int = 10


PROTOCOL_ENGINE_LIMITS = EngineLimits()


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
    """Grade each response against ``answer``; with no answer (empty or blank) every response is wrong, so
    the row stays in the denominator and can never be matched by an empty ``\\boxed{}``."""
    from vppo.reward import grade  # mathruler pulls in sympy: only where responses are graded

    grades = [grade(r, answer) for r in responses]
    correct = [int(g.accuracy) if answer.strip() else 0 for g in grades]
    return ScoredQuestion(list(responses), [g.extracted for g in grades], correct)


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


def paper_average(scores: Mapping[str, tuple[float | None, float | None]]) -> tuple[float | None, float | None]:
    """The paper's "Avg" from ``{benchmark key: (accuracy, stderr)}``: :func:`benchmark_average` over the paper's
    Avg set (``vppo.catalog.PAPER_AVG``) only, whatever other benchmarks ``scores`` holds; (None, None) unless
    every member of that set has an accuracy (a subset's mean is not the paper's Avg)."""
    members = [scores.get(key, (None, None)) for key in PAPER_AVG]
    if any(accuracy is None for accuracy, _ in members):
        return None, None
    return benchmark_average([a for a, _ in members], [s for _, s in members])
