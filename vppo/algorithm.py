"""VPPO algorithm core: pure tensor functions (no trainer, no model), in the style of veRL's core_algos.

Shapes: B responses, T response positions (right- or left-padded), V vocabulary. ``response_mask`` is a 0/1
tensor [B, T] (any dtype) marking real response tokens. Every function here is a pure function of its
inputs; randomness, models and optimisers live elsewhere. What each function reproduces is cited against
docs/protocol.md (sections 1-4), which records the official code's behaviour.

The method presets (grpo, dapo, vppo and the ablations) live in the study registry, :mod:`vppo.catalog`
(``MethodPreset``, ``METHOD_PRESETS``, ``get_method``); this module holds none, and re-exports those names only
for its callers' imports. :func:`vppo_weights` turns a preset plus dependencies into the TGF mask and TAS
factors that :func:`policy_loss` takes.
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, NamedTuple, Sequence, Union

import torch

from vppo.catalog import METHOD_PRESETS, MethodPreset, get_method  # noqa: F401 (the presets are data)

#: log-ratio clamp used wherever exp(logp difference) is taken (docs/protocol.md §1 and 4).
LOG_RATIO_CLAMP = 20.0
#: upper clamp of the per-token k3 dependency (docs/protocol.md §1).
K3_MAX = 10.0
#: TAS falls back to alpha = 1 when the score spread is this small (docs/protocol.md §3).
TAS_MIN_SPREAD = 1e-6
#: the code's guard in beta_max = beta_min + (1 - beta_min) / (mu + 1e-8) (docs/protocol.md §3).
TAS_MU_EPS = 1e-8
#: default number of token rows per chunk for the full-vocabulary KL (rows x V float32 each side).
KL_CHUNK_TOKENS = 256

#: A full-vocabulary source for the "kl" estimator: a tensor [B, T, V] of logits or log-probs, or a
#: callable ``rows -> [len(rows), V]`` taking a LongTensor of flat indices into the B*T positions (lets
#: the caller apply the LM head chunk by chunk so [B*T, V] never exists at all).
VocabSource = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _valid(response_mask: torch.Tensor) -> torch.Tensor:
    return response_mask.bool()


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"vppo/algorithm.py: {name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


# --------------------------------------------------------------------------------------------------
# 1. Token vision dependency (docs/protocol.md §1)
# --------------------------------------------------------------------------------------------------

def k3_dependency(logp: torch.Tensor, masked_logp: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The code's per-token dependency from sampled-token log-probs.

    logp, masked_logp: [B, T] log-prob of the sampled token with the real / masked image.
    Returns float32 [B, T]: clamp(exp(d) - d - 1, 0, 10) with d = clamp(masked_logp - logp, -20, 20),
    exactly 0 on padding. Detached: the dependency only selects and weights, it never carries gradient.
    """
    _check_same_shape("logp", logp, "masked_logp", masked_logp)
    _check_same_shape("logp", logp, "response_mask", response_mask)
    d = (masked_logp.detach().float() - logp.detach().float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    dep = (torch.exp(d) - d - 1.0).clamp(0.0, K3_MAX)
    return torch.where(_valid(response_mask), dep, torch.zeros_like(dep))


def _rows_from(source: VocabSource, rows: torch.Tensor) -> torch.Tensor:
    if callable(source) and not isinstance(source, torch.Tensor):
        return source(rows)
    return source.reshape(-1, source.shape[-1]).index_select(0, rows.to(source.device))


def full_kl_dependency(
    logp: VocabSource,
    masked_logp: VocabSource,
    response_mask: torch.Tensor,
    chunk_tokens: int = KL_CHUNK_TOKENS,
) -> torch.Tensor:
    """The paper's definition: exact KL(pi(.|I) || pi(.|I')) per token over the whole vocabulary.

    logp, masked_logp: [B, T, V] logits or log-probs (any float dtype, bf16 fine) with the real / masked
    image, or callables ``rows -> [n, V]`` (see :data:`VocabSource`). Each chunk of at most
    ``chunk_tokens`` VALID positions is upcast to float32 and renormalised with log_softmax (so logits and
    log-probs both work); at most three float32 [chunk_tokens, V] tensors exist at a time, never a [B*T, V]
    float32 copy.
    Returns float32 [B, T], >= 0, exactly 0 on padding. Detached.
    """
    if chunk_tokens < 1:
        raise ValueError(f"vppo/algorithm.py: chunk_tokens must be >= 1, got {chunk_tokens}")
    valid_rows = torch.nonzero(_valid(response_mask).reshape(-1), as_tuple=False).squeeze(1)
    out = torch.zeros(response_mask.numel(), dtype=torch.float32, device=response_mask.device)
    with torch.no_grad():
        for start in range(0, valid_rows.numel(), chunk_tokens):
            rows = valid_rows[start:start + chunk_tokens]
            log_p = torch.log_softmax(_rows_from(logp, rows).float(), dim=-1)
            log_q = torch.log_softmax(_rows_from(masked_logp, rows).float(), dim=-1)
            # in place on the two tensors this chunk owns, so at most three float32 [n, V] exist at once
            difference = log_q.neg_().add_(log_p)  # log p - log q
            kl = log_p.exp_().mul_(difference).sum(-1)
            out[rows.to(out.device)] = kl.clamp_min(0.0).to(out.device)  # tiny negative rounding -> 0
            del log_p, log_q, difference
    return out.reshape(response_mask.shape)


#: estimator name -> fn(logp, masked_logp, response_mask, **kw) -> [B, T]
DEPENDENCY_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "k3": k3_dependency,
    "kl": full_kl_dependency,
}


def token_vision_dependency(logp, masked_logp, response_mask: torch.Tensor, estimator: str = "k3", **kwargs):
    """Per-token vision dependency [B, T] (float32, 0 on padding) with the named estimator.

    "k3" (default, the code): logp/masked_logp are sampled-token log-probs [B, T].
    "kl" (the paper's definition): full-vocabulary [B, T, V] tensors or chunk callables; kwargs chunk_tokens.
    """
    try:
        fn = DEPENDENCY_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"vppo/algorithm.py: unknown dependency estimator {estimator!r}; "
                         f"valid: {sorted(DEPENDENCY_ESTIMATORS)}") from None
    return fn(logp, masked_logp, response_mask, **kwargs)


# --------------------------------------------------------------------------------------------------
# 2. Token-level Gradient Filtering (docs/protocol.md §2)
# --------------------------------------------------------------------------------------------------

def keep_counts(n_valid: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """k_i = ceil(float32(n_valid_i) * float32(keep_ratio)), as the official code computes it. int [B] -> int64 [B].

    float32 matters: 50 * 0.3 and 25 * 0.6 are 15.000001 there, so k is 16 where exact maths gives 15 (at
    p = 0.4 both agree: 5 * 0.4 is exactly 2 in float32 and in float64).
    """
    if not 0.0 <= float(keep_ratio) <= 1.0:
        raise ValueError(f"vppo/algorithm.py: keep_ratio must be in [0, 1], got {keep_ratio}")
    ratio = torch.tensor(float(keep_ratio), dtype=torch.float32, device=n_valid.device)
    return torch.ceil(n_valid.to(torch.float32) * ratio).to(torch.int64)


def tgf_mask(dependency: torch.Tensor, response_mask: torch.Tensor, keep_ratio: float = 0.4) -> torch.Tensor:
    """Keep the top ceil(n_valid * keep_ratio) tokens of each row by dependency.

    dependency, response_mask: [B, T]. Returns float32 0/1 [B, T]. Ties go to the earlier position
    (stable sort), padding is never selected, a row with no valid token is all zeros.
    """
    _check_same_shape("dependency", dependency, "response_mask", response_mask)
    valid = _valid(response_mask)
    # Padding ranks strictly below every valid token, whatever the valid values are (even -inf / nan).
    key = torch.nan_to_num(dependency.detach().float(), nan=-1e30, neginf=-1e30, posinf=1e30)
    key = torch.where(valid, key, torch.full_like(key, -math.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    k = keep_counts(valid.sum(dim=1), keep_ratio)
    ranks = torch.arange(key.shape[1], device=key.device).expand_as(key)
    keep_sorted = ranks < k.unsqueeze(1)
    mask = torch.zeros_like(valid).scatter(1, order, keep_sorted)
    return (mask & valid).float()


# --------------------------------------------------------------------------------------------------
# 3. Trajectory-level Advantage Shaping (docs/protocol.md §3)
# --------------------------------------------------------------------------------------------------

def trajectory_scores(
    dependency: torch.Tensor, response_mask: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """score_i = sum_t(dep_t * mask_t) / max(n_valid_i, 1)  (docs/protocol.md §3) -> float32 [B].

    mask_t is the response mask: the official code (dp_actor.py) scores every valid token. ``token_mask``
    (the TGF mask) restricts the sum to the kept tokens, the ``tas_score_kept_tokens_only`` variant. The
    denominator is always the number of VALID tokens, not the kept ones.
    """
    _check_same_shape("dependency", dependency, "response_mask", response_mask)
    weight = _valid(response_mask).float()
    if token_mask is not None:
        _check_same_shape("token_mask", token_mask, "response_mask", response_mask)
        weight = weight * token_mask.detach().float()
    n_valid = _valid(response_mask).sum(dim=1).clamp_min(1).float()
    return (dependency.detach().float() * weight).sum(dim=1) / n_valid


def consecutive_groups(n_rows: int, group_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """int64 [n_rows]: row r is in group r // group_size (consecutive runs; the last may be shorter)."""
    if group_size < 1:
        raise ValueError(f"vppo/algorithm.py: group_size must be >= 1, got {group_size}")
    return torch.arange(n_rows, device=device) // group_size


def tas_alpha(
    scores: torch.Tensor,
    has_tokens: torch.Tensor,
    beta_min: float = 0.9,
    reference_scores: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The code's advantage shaping factor alpha_i from trajectory scores, float32 [B] (docs/protocol.md §3).

    scores: float [B] (:func:`trajectory_scores`); has_tokens: bool [B], rows with at least one valid token.
    reference_scores: 1-D scores of the update mini-batch (rows with tokens) that give min/max; default
    ``scores[has_tokens]``. groups: int64 [B] group id per row, default one group for all rows: mu, and with it
    beta_max = beta_min + (1 - beta_min) / (mu + 1e-8), is taken per group, as the mean of norm_i over the
    group's rows with tokens (the official code's group is its device micro-batch). alpha = 1 for every row
    when max - min <= 1e-6, and for rows without tokens (they carry no loss anyway).
    """
    scores = scores.detach().float().reshape(-1)
    has_tokens = has_tokens.bool().reshape(-1).to(scores.device)
    reference = scores[has_tokens] if reference_scores is None else reference_scores.detach().float().reshape(-1)
    ones = torch.ones_like(scores)
    if reference.numel() == 0 or not bool(has_tokens.any()):
        return ones
    low, high = reference.min().to(scores.device), reference.max().to(scores.device)
    if float(high - low) <= TAS_MIN_SPREAD:
        return ones
    groups = torch.zeros_like(scores, dtype=torch.int64) if groups is None else groups.to(scores.device).reshape(-1)
    _check_same_shape("groups", groups, "scores", scores)
    norm = ((scores - low) / (high - low)).clamp(0.0, 1.0)
    beta_max = torch.ones_like(scores)
    for group in torch.unique(groups[has_tokens]).tolist():
        # A mean per group (not one scatter-add) keeps a single group bit-identical to the per-batch formula.
        rows = groups == group
        mu = norm[rows & has_tokens].mean()
        beta_max[rows] = beta_min + (1.0 - beta_min) / (mu + TAS_MU_EPS)
    alpha = beta_min + norm * (beta_max - beta_min)
    return torch.where(has_tokens, alpha, ones)


def tas_scale(
    dependency: torch.Tensor,
    response_mask: torch.Tensor,
    beta_min: float = 0.9,
    minibatch_scores: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The code's advantage shaping factor alpha_i, float32 [B] (docs/protocol.md §3), from dependencies.

    dependency, response_mask (, token_mask): [B, T]; scores from :func:`trajectory_scores` (``token_mask``
    only for the ``tas_score_kept_tokens_only`` variant). minibatch_scores: 1-D scores of the update
    mini-batch (responses with n_valid > 0, same mask convention) for min/max; groups: int64 [B]; both as in
    :func:`tas_alpha` (defaults: this batch's own range, one group = one official micro-batch).
    """
    scores = trajectory_scores(dependency, response_mask, token_mask)
    return tas_alpha(scores, _valid(response_mask).any(dim=1), beta_min, minibatch_scores, groups)


# --------------------------------------------------------------------------------------------------
# 4. Advantages and online filtering (docs/protocol.md §4)
# --------------------------------------------------------------------------------------------------

def group_index(group_ids: Sequence[Hashable] | torch.Tensor) -> tuple[torch.Tensor, list]:
    """Map per-response group ids to (inverse int64 [B], unique ids in order of first appearance)."""
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    first_seen: dict = {}
    inverse = [first_seen.setdefault(g, len(first_seen)) for g in ids]
    return torch.tensor(inverse, dtype=torch.int64), list(first_seen)


def _group_sums(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


def grpo_advantages(rewards: torch.Tensor, group_ids, eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantage [B]: (r_i - mean_g) / (std_g + eps) over the responses of each group.

    rewards: [B]; group_ids: [B] hashables (e.g. prompt uid). std is the UNBIASED sample std (n - 1),
    torch.std's default, as veRL's compute_grpo_outcome_advantage; a group of one response gets
    mean 0 and std 1 (veRL's convention), i.e. advantage = its reward.
    """
    r = rewards.detach().float().reshape(-1)
    inverse, uniques = group_index(group_ids)
    if inverse.numel() != r.numel():
        raise ValueError(f"vppo/algorithm.py: {r.numel()} rewards but {inverse.numel()} group ids")
    inverse = inverse.to(r.device)
    count = _group_sums(torch.ones_like(r), inverse, len(uniques))
    mean = _group_sums(r, inverse, len(uniques)) / count
    sq = _group_sums((r - mean[inverse]) ** 2, inverse, len(uniques))
    std = torch.sqrt(sq / (count - 1).clamp_min(1))
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return (r - mean[inverse]) / (std[inverse] + eps)


class GroupKeep(NamedTuple):
    """Result of :func:`dynamic_sampling_keep`: ``keep[j]`` belongs to ``group_ids[j]``."""

    group_ids: list          # unique group ids, in order of first appearance in the batch
    keep: torch.Tensor       # bool [G]
    row_keep: torch.Tensor   # bool [B]: keep flag of each response's group


def dynamic_sampling_keep(accuracy: torch.Tensor, group_ids, low: float = 0.01, high: float = 0.99) -> GroupKeep:
    """DAPO online filtering: keep a group iff low < mean accuracy < high (drop <= low and >= high)."""
    acc = accuracy.detach().float().reshape(-1)
    inverse, uniques = group_index(group_ids)
    if inverse.numel() != acc.numel():
        raise ValueError(f"vppo/algorithm.py: {acc.numel()} accuracies but {inverse.numel()} group ids")
    inverse = inverse.to(acc.device)
    mean = _group_sums(acc, inverse, len(uniques)) / _group_sums(torch.ones_like(acc), inverse, len(uniques))
    keep = (mean > low) & (mean < high)
    return GroupKeep(group_ids=uniques, keep=keep, row_keep=keep[inverse])


# --------------------------------------------------------------------------------------------------
# 5. Clipped policy loss (docs/protocol.md §2 and 4)
# --------------------------------------------------------------------------------------------------

def _masked_fraction(flag: torch.Tensor, valid: torch.Tensor) -> float:
    n = int(valid.sum())
    return float((flag & valid).sum()) / n if n else 0.0


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float = 3.0,
    entropy_coef: float = 0.0,
    alpha: torch.Tensor | None = None,
    loss_denominator: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean clipped surrogate with clip-higher and dual clip (veRL compute_policy_loss semantics).

    logp (with grad), old_logp: [B, T] sampled-token log-probs. advantages: [B] or [B, T]. alpha: optional
    TAS factor [B] multiplying the advantages. token_mask: optional TGF mask [B, T] (detached) multiplying
    each token's loss. The sum is divided by ``loss_denominator`` if given (the mini-batch's total valid
    tokens, for gradient accumulation over micro-batches) else by this batch's valid token count: the
    average runs over ALL valid tokens even when token_mask zeroes some (docs/protocol.md §2). The entropy penalty
    entropy_coef * mean(-logp) uses the same denominator and all valid tokens (docs/protocol.md §4).

    Returns (scalar loss, metrics of python floats: pg_loss, entropy_loss, clipfrac_low, clipfrac_high,
    clipfrac_dual, kept_token_fraction, ppo_kl [, alpha_mean]). Clip fractions count valid tokens whose
    gradient the respective clamp cuts: ratio > 1+clip_high with A > 0, ratio < 1-clip_low with A < 0,
    ratio > dual_clip with A < 0.
    """
    _check_same_shape("logp", logp, "old_logp", old_logp)
    _check_same_shape("logp", logp, "response_mask", response_mask)
    if not (0.0 <= clip_low < 1.0 and clip_high >= 0.0 and dual_clip > 1.0):
        raise ValueError(f"vppo/algorithm.py: need 0 <= clip_low < 1, clip_high >= 0, dual_clip > 1; "
                         f"got {clip_low}, {clip_high}, {dual_clip}")
    valid = _valid(response_mask)
    adv = advantages.detach().float()
    if alpha is not None:
        adv = adv * alpha.detach().float().reshape(-1, *([1] * (adv.dim() - 1)))
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    adv = adv.expand_as(logp).to(logp.device)

    log_ratio = (logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pessimistic = torch.maximum(unclipped, clipped)
    dual = torch.minimum(pessimistic, -adv * dual_clip)
    per_token = torch.where(adv < 0, dual, pessimistic)

    weight = valid.to(per_token.dtype)
    if token_mask is not None:
        _check_same_shape("token_mask", token_mask, "response_mask", response_mask)
        weight = weight * token_mask.detach().to(per_token.dtype)
    denominator = valid.sum().clamp_min(1) if loss_denominator is None else loss_denominator
    denominator = torch.as_tensor(denominator, dtype=per_token.dtype, device=per_token.device)
    pg_loss = (per_token * weight).sum() / denominator
    entropy_loss = (-logp * valid.to(logp.dtype)).sum() / denominator
    loss = pg_loss + entropy_coef * entropy_loss

    with torch.no_grad():
        r = ratio.detach()
        metrics = {
            "pg_loss": float(pg_loss.detach()),
            "entropy_loss": float(entropy_loss.detach()),
            "clipfrac_high": _masked_fraction((r > 1.0 + clip_high) & (adv > 0), valid),
            "clipfrac_low": _masked_fraction((r < 1.0 - clip_low) & (adv < 0), valid),
            "clipfrac_dual": _masked_fraction((r > dual_clip) & (adv < 0), valid),
            "kept_token_fraction": (float((weight > 0).sum()) / max(int(valid.sum()), 1)),
            "ppo_kl": float(((-log_ratio.detach()) * valid).sum() / valid.sum().clamp_min(1)),
        }
        if alpha is not None:
            metrics["alpha_mean"] = float(alpha.detach().float().mean())
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# 6. Applying a method preset (the presets are data in vppo.catalog)
# --------------------------------------------------------------------------------------------------

class VPPOWeights(NamedTuple):
    """What a preset makes of one batch's dependencies; None where the preset leaves the loss alone."""

    token_mask: torch.Tensor | None  # [B, T] TGF mask, or None
    alpha: torch.Tensor | None       # [B] TAS factor, or None
    scores: torch.Tensor             # [B] trajectory scores under the preset's mask convention


def vppo_weights(
    preset: MethodPreset,
    dependency: torch.Tensor,
    response_mask: torch.Tensor,
    minibatch_scores: torch.Tensor | None = None,
    tas_groups: torch.Tensor | None = None,
) -> VPPOWeights:
    """TGF mask and TAS alpha of a batch under ``preset``.

    The TAS score averages the dependency over all valid tokens (the official code), or over the TGF-kept
    tokens when ``preset.tas_score_kept_tokens_only`` (and TGF) is on. Call it once on the whole update
    mini-batch and pass ``scores[response_mask.any(1)]`` of that call as ``minibatch_scores`` for each
    micro-batch, so min/max come from the mini-batch (docs/protocol.md §3). Or call it once per update mini-batch
    with ``tas_groups`` (int64 [B], e.g. :func:`consecutive_groups`): min/max over the call's rows, TAS's mu
    per group, whatever chunks the loss later runs in.
    """
    token_mask = tgf_mask(dependency, response_mask, preset.keep_ratio) if preset.use_tgf else None
    score_mask = token_mask if preset.tas_score_kept_tokens_only else None
    scores = trajectory_scores(dependency, response_mask, score_mask)
    alpha = (tas_scale(dependency, response_mask, preset.beta_min, minibatch_scores, score_mask, tas_groups)
             if preset.use_tas else None)
    return VPPOWeights(token_mask=token_mask, alpha=alpha, scores=scores)
