"""The statistics of ``vppo check`` and ``vppo compare`` as small pure functions (numpy only, no files).

Two results of the same questions are compared question by question: ``d_i`` = candidate avg@k minus reference
avg@k of question ``i`` (points). Under "nothing changed" the two runs are exchangeable draws, so each ``d_i`` is
symmetric about 0 and the questions are independent: flipping the sign of any ``d_i`` is as likely as not. The
one-sided p-value of a mean drop is the share of the ``2^m`` sign flips whose statistic is at most the observed
one (:func:`sign_flip_p`): exact, with no variance estimate to be zero, whatever the number of questions.

- :func:`paired_test`: one benchmark (one array of ``d_i``) or the paper's Avg (one array per benchmark: the
  unweighted mean of the benchmarks' mean differences, each question weighted ``1 / (B n_b)``).
- :func:`tolerance_test`: against a published number (no per-question data): the candidate's own standard
  error and a stated protocol tolerance.
- :func:`holm`: Holm's step-down adjustment, so the chance of any false alarm over a family of rows is at most
  alpha whatever their dependence (the Avg row depends on the benchmark rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

#: Up to this many non-zero differences the sign-flip distribution is enumerated (2^16 sums); beyond, its
#: normal approximation (mean 0, variance sum x_i^2; symmetric, so good in the tails already at tens of terms).
EXACT_MAX = 16


@dataclass(frozen=True)
class PairedTest:
    """A difference (points) with its standard error and one-sided p-values for a drop and for a gain."""

    diff: float
    se: float
    n: int  # questions (over all benchmarks for the Avg)
    p_drop: float
    p_gain: float


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    """Mean of ``values`` (shape (n,), n >= 1) and its standard error sd / sqrt(n), ddof 1 (0 for one value)."""
    values = np.asarray(values, dtype=float)
    se = float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else 0.0
    return float(values.mean()), se


def sign_flip_p(x: np.ndarray) -> tuple[float, float]:
    """(P(S <= T), P(S >= T)) for T = sum(x) and S = sum(s_i x_i) over independent fair signs s_i.

    ``x``: shape (m,), the weighted paired differences. Exact when at most :data:`EXACT_MAX` are non-zero."""
    x = np.asarray(x, dtype=float)
    x = x[x != 0]
    observed = float(x.sum())
    if x.size == 0:
        return 1.0, 1.0
    if x.size <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2 ** x.size)[:, None] >> np.arange(x.size)) & 1)  # (2^m, m) of +-1
        sums = signs @ x
        tie = 1e-9 * float(np.abs(x).sum())  # the same sum reached in another order of float additions
        return float(np.mean(sums <= observed + tie)), float(np.mean(sums >= observed - tie))
    z = observed / math.sqrt(float(np.sum(x * x)))
    return NormalDist().cdf(z), 1 - NormalDist().cdf(z)


def paired_test(diffs_per_benchmark: Sequence[Sequence[float]]) -> PairedTest:
    """The mean over benchmarks of each benchmark's mean paired difference (one benchmark: its mean), its
    standard error sqrt(sum se_b^2) / B with se_b = sd_b / sqrt(n_b) (ddof 1), and its sign-flip p-values."""
    arrays = [np.asarray(d, dtype=float) for d in diffs_per_benchmark]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("paired_test needs at least one question per benchmark")
    count = len(arrays)
    weighted = np.concatenate([a / (count * a.size) for a in arrays])
    ses = [mean_and_se(a)[1] for a in arrays]
    p_drop, p_gain = sign_flip_p(weighted)
    return PairedTest(float(weighted.sum()), math.sqrt(sum(s * s for s in ses)) / count,
                      sum(a.size for a in arrays), p_drop, p_gain)


def resolution(n_questions: int, k: int) -> float:
    """The step of an avg@k over n questions (points): one sample more or less right."""
    return 100.0 / (n_questions * k)


def tolerance_test(diff: float, se: float, tolerance: float) -> tuple[float, float]:
    """(p of a drop beyond ``tolerance``, p of a gain beyond it) for a candidate ``diff`` points off a published
    number, from the normal approximation with the candidate's standard error ``se`` (> 0; floor it at
    :func:`resolution` first: all questions scoring alike give a measured se of 0, not a known mean)."""
    if se <= 0:
        raise ValueError("tolerance_test needs a positive standard error (floor it at the resolution)")
    normal = NormalDist()
    return normal.cdf((diff + tolerance) / se), 1 - normal.cdf((diff - tolerance) / se)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: reject row i at family-wise level alpha when its
    adjusted p <= alpha. The i-th smallest p is multiplied by (m - i) (i from 0), then made non-decreasing."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
