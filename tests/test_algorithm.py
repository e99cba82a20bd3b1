"""Hand-computed cases for every function of vppo/algorithm.py (derivations in the comments)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vppo.algorithm import (
    DEPENDENCY_ESTIMATORS, METHOD_PRESETS, consecutive_groups, dynamic_sampling_keep, get_method, grpo_advantages,
    keep_counts, policy_loss, tas_alpha, tas_scale, tgf_mask, token_vision_dependency, trajectory_scores,
    vppo_weights,
)

T = torch.tensor


# ----------------------------------------------------------------------------- dependency: k3

def test_k3_hand_values_and_padding():
    logp = T([[-1.0, -2.0, -3.0, -0.5]])
    masked = T([[-1.0, -3.0, -1.0, -9.0]])
    mask = T([[1, 1, 1, 0]])
    # d = masked - logp = [0, -1, 2, pad]; dep = e^d - d - 1:
    #   d=0 -> 1 - 0 - 1 = 0;  d=-1 -> e^-1 + 1 - 1 = 0.3678794;  d=2 -> e^2 - 3 = 4.3890561; pad -> 0
    dep = token_vision_dependency(logp, masked, mask)
    assert dep.dtype == torch.float32
    torch.testing.assert_close(dep, T([[0.0, 0.3678794, 4.3890561, 0.0]]), atol=1e-6, rtol=0)


def test_k3_clamps():
    # d = +30 -> clamped to 20 -> e^20 - 21 ~ 4.85e8 -> clamped to 10.
    # d = -30 -> clamped to -20 -> e^-20 + 19 ~ 19.0 -> clamped to 10.
    # d = 3 -> e^3 - 4 = 16.0855 -> 10;  d = -5 -> e^-5 + 4 = 4.0067379 (below the clamp).
    logp = T([[0.0, 0.0, 0.0, 0.0]])
    masked = T([[30.0, -30.0, 3.0, -5.0]])
    dep = token_vision_dependency(logp, masked, torch.ones(1, 4))
    torch.testing.assert_close(dep, T([[10.0, 10.0, 10.0, 4.0067379]]), atol=1e-6, rtol=0)


def test_dependency_is_detached_and_unknown_estimator_raises():
    logp = torch.zeros(1, 2, requires_grad=True)
    assert not token_vision_dependency(logp, logp - 1, torch.ones(1, 2)).requires_grad
    with pytest.raises(ValueError, match="unknown dependency estimator 'bogus'.*k3.*kl"):
        token_vision_dependency(logp, logp, torch.ones(1, 2), estimator="bogus")
    assert set(DEPENDENCY_ESTIMATORS) == {"k3", "kl"}


# ----------------------------------------------------------------------------- dependency: full KL

def test_full_kl_hand_value():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3) = 0.1438410
    # second position p = q -> 0; third position is padding -> 0.
    p = torch.log(T([[[0.5, 0.5], [0.3, 0.7], [0.9, 0.1]]]))
    q = torch.log(T([[[0.25, 0.75], [0.3, 0.7], [0.1, 0.9]]]))
    dep = token_vision_dependency(p, q, T([[1, 1, 0]]), estimator="kl")
    torch.testing.assert_close(dep, T([[0.1438410, 0.0, 0.0]]), atol=1e-6, rtol=0)


def _naive_kl(logits_p, logits_q, mask):
    log_p = torch.log_softmax(logits_p.float(), -1)
    log_q = torch.log_softmax(logits_q.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * mask


def test_full_kl_matches_naive_for_every_chunk_size_and_callable():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 11, generator=gen) * 3, torch.randn(3, 5, 11, generator=gen) * 3
    mask = T([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    reference = _naive_kl(a, b, mask)
    for chunk in (1, 2, 3, 7, 1000):
        got = token_vision_dependency(a, b, mask, estimator="kl", chunk_tokens=chunk)
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    # A callable source gets flat row indices and returns [n, V] rows; it is never asked for padding rows.
    asked = []

    def rows_of(t):
        def fn(rows):
            asked.extend(rows.tolist())
            return t.reshape(-1, 11)[rows]
        return fn

    got = token_vision_dependency(rows_of(a), rows_of(b), mask, estimator="kl", chunk_tokens=2)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    assert sorted(set(asked)) == [0, 1, 2, 3, 4, 5, 6]


def test_full_kl_accepts_bf16_and_upcasts():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, 50, generator=gen).bfloat16(), torch.randn(2, 4, 50, generator=gen).bfloat16()
    got = token_vision_dependency(a, b, torch.ones(2, 4), estimator="kl", chunk_tokens=3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _naive_kl(a, b, torch.ones(2, 4)), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- TGF

def test_keep_counts_are_the_official_float32_ceil():
    # The official k = torch.ceil(n_valid * p) runs in float32: 50 * 0.3 = 15.000001 -> 16 and
    # 25 * 0.6 = 15.000001 -> 16, one more token than exact maths (15); float64 agrees with exact maths there.
    assert keep_counts(T([50, 25]), 0.3).tolist() == [16, 8] and keep_counts(T([25]), 0.6).tolist() == [16]
    assert math.ceil(50 * 0.3) == 15 and math.ceil(25 * 0.6) == 15
    for p in (0.2, 0.3, 0.4, 0.6, 0.8):  # against the official expression itself, for every length up to 4096
        n = torch.arange(4097)
        assert torch.equal(keep_counts(n, p), torch.ceil(n * p).long()), p  # int64 tensor * float -> float32
    # at p = 0.4 float32 and exact maths agree: ceil(5*.4) = 2 in both widths, ceil(3*.4) = 2, 0 -> 0, ceil(.4) = 1
    assert keep_counts(T([5, 10, 3, 0, 1]), 0.4).tolist() == [2, 4, 2, 0, 1]
    assert keep_counts(T([10]), 0.3).tolist() == [3]
    assert keep_counts(T([7]), 0.0).tolist() == [0] and keep_counts(T([7]), 1.0).tolist() == [7]
    with pytest.raises(ValueError, match="keep_ratio"):
        keep_counts(T([3]), 1.5)


def test_tgf_mask_hand_cases():
    # n=5, k = ceil(5*0.4) = 2: the two 0.9s at positions 1 and 3.
    assert tgf_mask(T([[0.3, 0.9, 0.1, 0.9, 0.5]]), torch.ones(1, 5)).tolist() == [[0, 1, 0, 1, 0]]
    # three-way tie at 0.9 (positions 1, 2, 3), k = 2: the earlier two win.
    assert tgf_mask(T([[0.5, 0.9, 0.9, 0.9, 0.1]]), torch.ones(1, 5)).tolist() == [[0, 1, 1, 0, 0]]
    # left padding holding a huge value is never picked: n=2, k=ceil(0.8)=1 -> position 2 (dep 2 > 1).
    assert tgf_mask(T([[5.0, 1.0, 2.0]]), T([[0, 1, 1]])).tolist() == [[0, 0, 1]]
    # all-zero dependency (e.g. text-only rows): k=ceil(3*0.4)=2 earliest valid positions; empty row: zeros.
    dep, mask = torch.zeros(2, 4), T([[1, 1, 1, 0], [0, 0, 0, 0]])
    assert tgf_mask(dep, mask).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    assert tgf_mask(dep, mask, keep_ratio=1.0).tolist() == [[1, 1, 1, 0], [0, 0, 0, 0]]


# ----------------------------------------------------------------------------- TAS

def test_trajectory_scores_hand_values():
    dep, mask = T([[1.0, 2.0, 3.0, 7.0], [4.0, 0.0, 0.0, 0.0]]), T([[1, 1, 1, 0], [0, 0, 0, 0]])
    # row 0: (1+2+3)/3 = 2 (padding's 7 ignored); row 1: no valid token -> 0/max(0,1) = 0.
    torch.testing.assert_close(trajectory_scores(dep, mask), T([2.0, 0.0]))
    # with the TGF mask [0,1,1,0] the numerator drops the 1 but the denominator stays n_valid=3: 5/3.
    token_mask = T([[0, 1, 1, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(trajectory_scores(dep, mask, token_mask), T([5.0 / 3.0, 0.0]))


def _rows_with_scores(scores):
    """One valid token per row, so each row's trajectory score is its dependency."""
    return T(scores).unsqueeze(1), torch.ones(len(scores), 1)


def test_tas_scale_from_own_batch():
    # scores 0,1,2 -> min 0, max 2, norm 0, .5, 1, mu .5, beta_max = .9 + .1/.5 = 1.1
    # alpha = .9 + norm * .2 = .9, 1.0, 1.1 (mean exactly 1).
    alpha = tas_scale(*_rows_with_scores([0.0, 1.0, 2.0]), beta_min=0.9)
    torch.testing.assert_close(alpha, T([0.9, 1.0, 1.1]))


def test_tas_scale_with_minibatch_min_max():
    # mini-batch scores span [0, 4]; this micro-batch has 1 and 2 -> norm .25, .5; mu = .375;
    # beta_max = .9 + .1/.375 = 1.1666667; alpha = .9 + norm*.2666667 = .9666667, 1.0333333
    alpha = tas_scale(*_rows_with_scores([1.0, 2.0]), beta_min=0.9, minibatch_scores=T([0.0, 4.0, 2.0]))
    torch.testing.assert_close(alpha, T([0.9666667, 1.0333333]))
    # scores outside the mini-batch range are clamped: [1,2] range, scores 0 and 3 -> norm 0, 1 -> .9, 1.1
    alpha = tas_scale(*_rows_with_scores([0.0, 3.0]), minibatch_scores=T([1.0, 2.0]))
    torch.testing.assert_close(alpha, T([0.9, 1.1]))


def test_tas_scale_degenerate_cases_are_ones():
    torch.testing.assert_close(tas_scale(*_rows_with_scores([0.5, 0.5 + 1e-7])), T([1.0, 1.0]))
    # a row without valid tokens is excluded from min/max/mu and gets alpha 1:
    # valid rows score 0 and 2 -> alpha .9 and 1.1; the empty row -> 1.
    dep, mask = T([[0.0], [2.0], [9.0]]), T([[1], [1], [0]])
    torch.testing.assert_close(tas_scale(dep, mask), T([0.9, 1.1, 1.0]))


def _official_micro_batch_alpha(scores, lo, hi, beta_min=0.9):
    """The official per-micro-batch formula, in plain Python, for one micro-batch of valid responses."""
    norm = [min(max((s - lo) / (hi - lo), 0.0), 1.0) for s in scores]
    mu = sum(norm) / len(norm)
    beta_max = beta_min + (1 - beta_min) / (mu + 1e-8)
    return [beta_min + n * (beta_max - beta_min) for n in norm]


def test_tas_alpha_groups_hand_values():
    # update scores 0, 1, 2, 4 -> min 0, max 4, norm 0, .25, .5, 1; groups of 2:
    # group 0: mu .125, beta_max = .9 + .1/.125 = 1.7 -> alpha .9, .9 + .25 * .8 = 1.1
    # group 1: mu .75, beta_max = .9 + .1/.75 = 1.0333333 -> alpha .9666667, 1.0333333 (each group's mean is 1)
    groups = consecutive_groups(4, 2)
    assert groups.tolist() == [0, 0, 1, 1] and consecutive_groups(5, 2).tolist() == [0, 0, 1, 1, 2]
    alpha = tas_alpha(T([0.0, 1.0, 2.0, 4.0]), torch.ones(4, dtype=torch.bool), 0.9, groups=groups)
    torch.testing.assert_close(alpha, T([0.9, 1.1, 0.9666667, 1.0333333]))
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        consecutive_groups(4, 0)


@pytest.mark.parametrize("group_size", [1, 2, 4, 8, 16])
def test_tas_alpha_per_group_is_the_official_micro_batch_formula(group_size):
    # one update mini-batch of 16 responses: min/max over all 16, mu over each chunk of group_size rows
    scores = [(7 * i % 16) / 5 + (0.3 if i % 3 else 0.0) for i in range(16)]
    lo, hi = min(scores), max(scores)
    expected = [a for start in range(0, 16, group_size)
                for a in _official_micro_batch_alpha(scores[start:start + group_size], lo, hi)]
    dep, mask = _rows_with_scores(scores)
    alpha = vppo_weights(get_method("vppo_tas_only"), dep, mask, tas_groups=consecutive_groups(16, group_size)).alpha
    torch.testing.assert_close(alpha, T(expected), atol=1e-6, rtol=1e-6)
    # the old call shape: each micro-batch alone with the mini-batch's scores gives the same alpha
    for start in range(0, 16, group_size):
        chunk = tas_scale(dep[start:start + group_size], mask[start:start + group_size], 0.9,
                          minibatch_scores=T(scores))
        assert torch.equal(chunk, alpha[start:start + group_size])


def test_tas_alpha_groups_skip_rows_without_tokens():
    # rows 1 and 3 have no valid token: alpha 1, and they count in neither min/max nor their group's mu.
    # valid scores 0 (group 0), 1 and 3 (group 1) -> norm 0 | 1/3, 1; group 0: mu 0 -> alpha .9 (beta_min);
    # group 1: mu 2/3, beta_max = .9 + .15 = 1.05 -> alpha .9 + (1/3) * .15 = .95, 1.05
    dep, mask = T([[0.0], [9.0], [1.0], [9.0], [3.0]]), T([[1], [0], [1], [0], [1]])
    alpha = tas_scale(dep, mask, 0.9, groups=T([0, 0, 1, 1, 1]))
    torch.testing.assert_close(alpha, T([0.9, 1.0, 0.95, 1.0, 1.05]))
    # a single group is the whole-batch formula, bit for bit
    assert torch.equal(tas_scale(dep, mask, groups=torch.zeros(5, dtype=torch.int64)), tas_scale(dep, mask))


# ----------------------------------------------------------------------------- advantages, filtering

def test_grpo_advantages_hand_values():
    # group a: rewards 1, 0 -> mean .5, unbiased std sqrt((.25+.25)/1) = .7071068 -> +-.5/.7071078 = +-.7071058
    # group b: 0, 1 -> -+.7071058; group c: single response -> mean 0, std 1 -> its reward 1 / (1 + 1e-6)
    # group d: 1, 1 -> std 0 -> 0 / (0 + eps) = 0
    adv = grpo_advantages(T([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), ["a", "a", "b", "b", "c", "d", "d"])
    torch.testing.assert_close(adv, T([0.7071058, -0.7071058, -0.7071058, 0.7071058, 0.999999, 0.0, 0.0]))
    # three responses 3, 0, 0: mean 1, unbiased var (4+1+1)/2 = 3, std 1.7320508 -> 2/std, -1/std, -1/std
    torch.testing.assert_close(grpo_advantages(T([3.0, 0.0, 0.0]), [7, 7, 7], eps=0.0),
                               T([1.1547005, -0.5773503, -0.5773503]))


def test_dynamic_sampling_keep_hand_values():
    out = dynamic_sampling_keep(T([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.25, 1.0]), ["p", "p", "q", "q", "r", "r", "s", "s"])
    # p mean 1 (>= .99 drop), q mean 0 (<= .01 drop), r mean .5 keep, s mean .625 keep
    assert out.group_ids == ["p", "q", "r", "s"]
    assert out.keep.tolist() == [False, False, True, True]
    assert out.row_keep.tolist() == [False, False, False, False, True, True, True, True]
    # the bounds themselves are dropped: mean exactly .25 with low=.25
    assert dynamic_sampling_keep(T([0.5, 0.0]), [1, 1], low=0.25).keep.tolist() == [False]


# ----------------------------------------------------------------------------- policy loss

def _loss_case(adv, log_ratio, mask=(1, 1, 0), **kw):
    logp = torch.zeros(1, len(log_ratio), requires_grad=True)
    old = -T([log_ratio])  # logp - old = log_ratio
    loss, metrics = policy_loss(logp, old, T([adv]), T([mask]), **kw)
    loss.backward()
    return loss, metrics, logp.grad


def test_policy_loss_clip_higher_positive_advantage():
    # ratios 1.5 and 0.5, A = +1, clip (0.2, 0.28): token 0: max(-1.5, -1.28) = -1.28 (clipped, no grad);
    # token 1: max(-0.5, -0.8) = -0.5 (grad d/dlogp = -ratio*A/N = -0.5/2). loss = (-1.28 - 0.5)/2 = -0.89
    loss, metrics, grad = _loss_case(1.0, [math.log(1.5), math.log(0.5), 3.0])
    torch.testing.assert_close(loss, T(-0.89))
    torch.testing.assert_close(grad, T([[0.0, -0.25, 0.0]]))
    assert metrics["clipfrac_high"] == 0.5 and metrics["clipfrac_low"] == 0.0 and metrics["clipfrac_dual"] == 0.0
    # ppo_kl = mean(old - logp) over valid = -(ln 1.5 + ln .5)/2 = -ln(.75)/2 = 0.1438410
    assert metrics["ppo_kl"] == pytest.approx(0.1438410, abs=1e-6)


def test_policy_loss_negative_advantage_and_dual_clip():
    # A = -1, ratios 1.5, 0.5, 4: token0 max(1.5, 1.28) = 1.5 (grad ratio*|A|/N = 1.5/3); token1 max(.5, .8)
    # = .8 clipped (no grad); token2 max(4, 1.28) = 4 -> dual clip min(4, 3) = 3 (no grad).
    # loss = (1.5 + .8 + 3)/3 = 1.7666667
    loss, metrics, grad = _loss_case(-1.0, [math.log(1.5), math.log(0.5), math.log(4.0)], mask=(1, 1, 1))
    torch.testing.assert_close(loss, T(1.7666667))
    torch.testing.assert_close(grad, T([[0.5, 0.0, 0.0]]))
    assert metrics["clipfrac_low"] == pytest.approx(1 / 3) and metrics["clipfrac_dual"] == pytest.approx(1 / 3)


def test_policy_loss_token_mask_alpha_entropy_and_denominator():
    # As the clip-higher case but token 0 filtered by TGF: (0 + -0.5)/2 (denominator stays 2) = -0.25
    loss, metrics, grad = _loss_case(1.0, [math.log(1.5), math.log(0.5), 0.0], token_mask=T([[0, 1, 1]]))
    torch.testing.assert_close(loss, T(-0.25))
    assert metrics["kept_token_fraction"] == 0.5
    # alpha 2 doubles the advantage: token 1 -> max(-1.0, -1.6) = -1.0; token 0 filtered -> loss -0.5
    loss, metrics, _ = _loss_case(1.0, [math.log(1.5), math.log(0.5), 0.0], token_mask=T([[0, 1, 1]]), alpha=T([2.0]))
    torch.testing.assert_close(loss, T(-0.5))
    assert metrics["alpha_mean"] == 2.0
    # entropy penalty: logp = [-1, -3] -> mean(-logp) = 2; coef .1 -> +.2 on top of the pg loss (ratio 1,
    # A=1 -> pg = -1); an explicit loss_denominator of 4 halves both terms: (-2 + .1*4)/4 = -0.4
    logp, mask = T([[-1.0, -3.0]]), torch.ones(1, 2)
    loss, m = policy_loss(logp, logp, T([1.0]), mask, entropy_coef=0.1)
    torch.testing.assert_close(loss, T(-0.8))
    assert m["entropy_loss"] == pytest.approx(2.0)
    loss, _ = policy_loss(logp, logp, T([1.0]), mask, entropy_coef=0.1, loss_denominator=4)
    torch.testing.assert_close(loss, T(-0.4))


def test_policy_loss_micro_batches_with_denominator_sum_to_full_batch():
    gen = torch.Generator().manual_seed(3)
    logp, old = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    adv, mask = torch.randn(4, generator=gen), (torch.rand(4, 6, generator=gen) > 0.3).float()
    full, _ = policy_loss(logp, old, adv, mask, entropy_coef=0.06)
    total = mask.sum()
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], entropy_coef=0.06, loss_denominator=total)[0]
             for s in (slice(0, 1), slice(1, 4))]
    torch.testing.assert_close(parts[0] + parts[1], full)


def test_policy_loss_rejects_bad_clips():
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), T([1.0]), torch.ones(1, 1), dual_clip=1.0)


# ----------------------------------------------------------------------------- presets

def test_presets_and_get_method():
    assert list(METHOD_PRESETS) == ["grpo", "dapo", "vppo", "vppo_tas_only", "vppo_tgf_only", "vppo_exact_kl",
                                    "vppo_grey", "vppo_noise", "vppo_blur"]
    vppo, dapo, grpo = get_method("vppo"), get_method("dapo"), get_method("grpo")
    assert (vppo.use_tgf, vppo.use_tas, vppo.keep_ratio, vppo.beta_min) == (True, True, 0.4, 0.9)
    assert (vppo.clip_low, vppo.clip_high, vppo.dual_clip, vppo.entropy_coef) == (0.2, 0.28, 3.0, 0.06)
    assert vppo.dynamic_sampling and vppo.dependency_estimator == "k3" and vppo.masking == "patch"
    assert vppo.needs_masked_pass and get_method("vppo_tas_only").needs_masked_pass
    assert not dapo.needs_masked_pass and dapo.dynamic_sampling and dapo.clip_high == 0.28
    assert not grpo.dynamic_sampling and grpo.clip_high == 0.2 and not grpo.needs_masked_pass
    k2 = get_method("vppo_k0.2")
    assert k2 == dataclasses.replace(vppo, name="vppo_k0.2", keep_ratio=0.2)
    assert get_method("vppo_k1").keep_ratio == 1.0 and get_method("vppo_k.6").keep_ratio == 0.6
    with pytest.raises(dataclasses.FrozenInstanceError):
        vppo.keep_ratio = 0.5  # type: ignore[misc]
    for bad in ("ppo", "vppo_k0", "vppo_k1.5", "vppo_kx", "base"):
        with pytest.raises(ValueError, match="unknown method .*valid: .*dapo.*vppo_k<ratio>"):
            get_method(bad)


def test_vppo_weights_follow_the_preset():
    dep = T([[0.3, 0.9, 0.1, 0.9, 0.5], [0.0, 0.0, 1.0, 0.0, 0.0]])
    mask = torch.ones(2, 5)
    assert vppo_weights(get_method("dapo"), dep, mask)[:2] == (None, None)
    tgf_only = vppo_weights(get_method("vppo_tgf_only"), dep, mask)
    assert tgf_only.alpha is None and tgf_only.token_mask.tolist() == [[0, 1, 0, 1, 0], [1, 0, 1, 0, 0]]
    # vppo (official code): TAS score over ALL valid tokens / n_valid: 2.7/5 = .54 and 1/5 = .2
    # -> norm 1, 0, mu .5 -> alpha 1.1, .9
    full = vppo_weights(get_method("vppo"), dep, mask)
    torch.testing.assert_close(full.scores, T([0.54, 0.2]))
    torch.testing.assert_close(full.alpha, T([1.1, 0.9]))
    # the prose variant: score over the TGF-kept tokens / n_valid: (.9+.9)/5 = .36 and (0+1)/5 = .2
    kept = vppo_weights(dataclasses.replace(get_method("vppo"), tas_score_kept_tokens_only=True), dep, mask)
    torch.testing.assert_close(kept.scores, T([0.36, 0.2]))
    torch.testing.assert_close(kept.alpha, T([1.1, 0.9]))
