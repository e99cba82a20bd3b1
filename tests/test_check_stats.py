"""The statistics of ``vppo check`` (vppo/evaluation/paired.py): exact sign-flip p-values, Holm, the paper test's
floor, and calibration: on synthetic per-question data where nothing changed, the whole table's false-alarm
rate is at most alpha (within its binomial interval), and a real drop is found."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vppo.evaluation.paired import holm, paired_test, resolution, sign_flip_p, tolerance_test


def test_sign_flip_p_is_exact_for_few_questions():
    assert sign_flip_p(np.array([-1.0, -1.0])) == (0.25, 1.0)  # two equal drops: 1 of 4 sign patterns
    assert sign_flip_p(np.array([-2.0, 1.0, 0.0])) == (0.5, 0.75)  # sums -3, -1, 1, 3; zeros change nothing
    assert sign_flip_p(np.zeros(5)) == (1.0, 1.0)
    many = np.full(40, -1.0)  # beyond the exact range: the normal approximation, z = -sqrt(40)
    assert sign_flip_p(many)[0] == pytest.approx(0.5 * math.erfc(math.sqrt(40) / math.sqrt(2)))


def test_paired_test_of_one_benchmark_and_of_the_average():
    single = paired_test([[-12.5, -12.5]])  # both standard errors 0, equal drops: finite, not significant
    assert (single.diff, single.se, single.n, single.p_drop) == (-12.5, 0.0, 2, 0.25)
    both = paired_test([[0.0, -10.0], [5.0, 5.0, 5.0, 5.0]])  # mean over benchmarks of each mean: (-5 + 5) / 2
    assert both.diff == pytest.approx(0.0) and both.n == 6
    assert both.se == pytest.approx(math.sqrt((10 / math.sqrt(2) / math.sqrt(2)) ** 2) / 2)


def test_holm_adjusts_in_input_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_the_paper_test_needs_a_floored_se_and_applies_the_tolerance():
    assert resolution(601, 8) == pytest.approx(100 / 4808)
    with pytest.raises(ValueError):
        tolerance_test(-5.0, 0.0, 2.0)
    p_drop, p_gain = tolerance_test(-2.0, 1.0, 2.0)
    assert p_drop == pytest.approx(0.5) and p_gain == pytest.approx(1 - 0.5 * math.erfc(4 / math.sqrt(2)))


def flagged(rng, p: np.ndarray, p_candidate: np.ndarray, k: int, alpha: float) -> bool:
    """One replicate: reference and candidate sampled k times per question; True when the table (each
    benchmark and the Avg, Holm) flags any drop. ``p``: shape (benchmarks, questions)."""
    ref = rng.binomial(k, p) / k
    cand = rng.binomial(k, p_candidate) / k
    diffs = [100 * (c - r) for c, r in zip(cand, ref)]
    tests = [paired_test([d]) for d in diffs] + [paired_test(diffs)]
    return min(holm([t.p_drop for t in tests])) <= alpha


def test_false_alarm_rate_is_at_most_alpha_and_a_real_drop_is_found():
    rng = np.random.default_rng(0)
    alpha, replicates, k = 0.05, 400, 8
    p = rng.beta(0.5, 0.5, size=(8, 40))  # per-question accuracies: mostly near 0 or 1, as real ones
    false_alarms = sum(flagged(rng, p, p, k, alpha) for _ in range(replicates)) / replicates
    assert false_alarms <= alpha + 2.58 * math.sqrt(alpha * (1 - alpha) / replicates)
    worse = np.clip(p - 0.1, 0, 1)  # every question 10 points worse
    assert sum(flagged(rng, p, worse, k, alpha) for _ in range(100)) / 100 >= 0.9
