"""Empirical checks of the algorithm core's claims on a toy policy (used by tests and quoted by docs/protocol.md section 7).

The paper states Var(g_VPPO) ~ k * E[alpha^2] * Var(g_GRPO): TGF keeps a fraction k of the tokens while
the token-mean still divides by all valid tokens, and TAS scales each response's advantage by alpha.
The statement is exact in expectation when the per-token gradient terms A_i * grad log pi(x_t) are
uncorrelated across tokens with equal second moments and the selection/scaling is independent of them;
:func:`measure_gradient_variance_ratio` builds exactly that setting with a context-free softmax policy,
random rewards and random dependencies, runs the REAL code path (vppo_weights + policy_loss) and compares
the measured ratio with k * E[alpha^2] (token-weighted over the tokens that keep a gradient).

Run ``python -m vppo.algorithm_checks`` to print the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import torch

from vppo.algorithm import MethodPreset, get_method, grpo_advantages, policy_loss, vppo_weights
from vppo.catalog import KEEP_RATIO_PRESET, METHOD_PRESETS


def _toy_batch(gen: torch.Generator, theta: torch.Tensor, n_groups: int, group_size: int, max_len: int):
    """Sample one rollout batch from the context-free policy softmax(theta)."""
    batch = n_groups * group_size
    lengths = torch.randint(max_len // 2, max_len + 1, (batch,), generator=gen)
    response_mask = (torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)).float()
    tokens = torch.multinomial(torch.softmax(theta.detach(), -1), batch * max_len, replacement=True,
                               generator=gen).reshape(batch, max_len)
    rewards = torch.randint(0, 2, (batch,), generator=gen).float()
    group_ids = torch.arange(n_groups).repeat_interleave(group_size)
    # Per-response scale so trajectory scores differ (TAS has a spread), per-token exponential noise.
    scale = torch.rand(batch, 1, generator=gen) * 2.0
    dependency = -torch.log(torch.rand(batch, max_len, generator=gen)) * scale * response_mask
    return tokens, response_mask, rewards, group_ids, dependency


def _flat_grad(loss: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
    return grad.reshape(-1)


def measure_gradient_variance_ratio(
    method: str | MethodPreset = "vppo",
    replicates: int = 400,
    vocab: int = 32,
    n_groups: int = 4,
    group_size: int = 8,
    max_len: int = 48,
    seed: int = 0,
) -> dict[str, float]:
    """Measured Var(g_method)/Var(g_GRPO) next to the prediction k * E[alpha^2] (see module docstring).

    Var is the trace of the gradient covariance over ``replicates`` independent batches; both gradients are
    taken on the same batch (paired), on-policy (ratio 1, so clipping is inactive) with no entropy term.
    Returns measured ratio, prediction, k (kept fraction of valid tokens), E[alpha^2] over kept tokens and
    the ratio's standard error from a paired delta-method estimate.
    """
    preset = method if isinstance(method, MethodPreset) else get_method(method)
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.randn(vocab, generator=gen) * 0.5).requires_grad_(True)
    grads_base, grads_method, kept, valid, alpha_sq_kept = [], [], 0.0, 0.0, 0.0
    for _ in range(replicates):
        tokens, mask, rewards, group_ids, dep = _toy_batch(gen, theta, n_groups, group_size, max_len)
        logp = torch.log_softmax(theta, -1)[tokens]
        adv = grpo_advantages(rewards, group_ids.tolist())
        weights = vppo_weights(preset, dep, mask)
        base_loss, _ = policy_loss(logp, logp.detach(), adv, mask)
        method_loss, _ = policy_loss(logp, logp.detach(), adv, mask, token_mask=weights.token_mask,
                                     alpha=weights.alpha)
        grads_base.append(_flat_grad(base_loss, theta))
        grads_method.append(_flat_grad(method_loss, theta))
        token_weight = mask if weights.token_mask is None else weights.token_mask
        alpha = torch.ones(mask.shape[0]) if weights.alpha is None else weights.alpha
        kept += float(token_weight.sum())
        valid += float(mask.sum())
        alpha_sq_kept += float((token_weight * alpha.unsqueeze(1) ** 2).sum())
    g_base, g_method = torch.stack(grads_base).double(), torch.stack(grads_method).double()
    sq_base = ((g_base - g_base.mean(0)) ** 2).sum(1)       # per-replicate squared deviation
    sq_method = ((g_method - g_method.mean(0)) ** 2).sum(1)
    var_base, var_method = float(sq_base.mean()), float(sq_method.mean())
    ratio = var_method / var_base
    # Delta method for a ratio of two paired means: var(r) ~ var(x - r y) / (n * mean(y)^2).
    resid = sq_method - ratio * sq_base
    stderr = float(resid.std() / (math.sqrt(replicates) * sq_base.mean()))
    k = kept / valid
    e_alpha_sq = alpha_sq_kept / kept
    return {
        "method": preset.name, "beta_min": preset.beta_min, "replicates": replicates, "measured_ratio": ratio, "stderr": stderr,
        "k": k, "E_alpha_sq": e_alpha_sq, "predicted_ratio": k * e_alpha_sq,
        "relative_gap": ratio / (k * e_alpha_sq) - 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Default: every preset that scales gradients (TGF or TAS on), and two points of the keep-ratio sweep.
    scaling = [name for name, preset in METHOD_PRESETS.items() if preset.needs_masked_pass]
    parser.add_argument("--methods", default=",".join([*scaling, f"{KEEP_RATIO_PRESET}_k0.2", f"{KEEP_RATIO_PRESET}_k0.8"]))
    parser.add_argument("--replicates", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods: list = args.methods.split(",")
    # A wide TAS range (beta_min 0.3) so E[alpha^2] visibly departs from 1.
    methods.append(dataclasses.replace(get_method("vppo"), name="vppo_beta0.3", beta_min=0.3))
    for method in methods:
        print(json.dumps(measure_gradient_variance_ratio(method, args.replicates, seed=args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
