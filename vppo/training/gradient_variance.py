"""``vppo gradient-variance``: the paper's variance statement Var(g_VPPO) ~ k * E[alpha^2] * Var(g_GRPO) measured on
the real policy gradients of a checkpoint (issue 13 item 4; :mod:`vppo.algorithm_checks` checks it on a toy policy).

Each of R replicates samples one rollout batch of G prompts x n responses exactly as a VPPO training step would
(the trainer's own generation, grading, dynamic sampling, GRPO advantages and masked-image dependency pass:
:meth:`vppo.training.trainer.VPPOTrainer.scored_rollout`, prompts taken from the trainer's seeded data stream),
then, on that SAME batch, takes the flattened full-parameter policy gradient of

- the baseline ``grpo`` weighting: every valid token, alpha = 1;
- each listed method's weighting: its TGF mask and TAS alpha (:func:`vppo.training.dependency.rollout_weights`).

All gradients are on-policy (old log-prob = log-prob, so no clip is active) with no entropy or KL term, and use
:func:`vppo.algorithm.policy_loss` with its token-mean over all valid tokens. Across replicates, per method:

- ``variance``: trace of the gradient covariance (unbiased, R - 1); ``variance_ratio`` = variance / the
  baseline's, with a paired bootstrap standard error (replicates resampled together for every method) and a
  delta-method one;
- ``predicted_ratio`` = k * E[alpha^2]: k the kept fraction of valid tokens, E[alpha^2] token-weighted over the
  kept tokens (as :func:`vppo.algorithm_checks.measure_gradient_variance_ratio` defines it);
- ``mean_grad_sq_norm`` = ||mean gradient||^2, ``signal_sq_norm`` = its unbiased estimate of ||E g||^2
  (minus variance / R), ``signal_to_noise`` = signal_sq_norm / variance (per replicate), and
  ``cosine_to_baseline`` between the method's and the baseline's mean gradients.

Each rollout is one update (``update_batch_prompts`` = G, one micro-batch): TGF per response, TAS's min/max
over the batch and its mu per ``tas_group_responses`` rows, as a training update of that size. The rollout is the
``vppo`` preset's (online filtering on, the recipe's masking and estimator) whatever methods are compared; the
masked-image pass of replicate r masks as training step r would.

All statistics come from the Gram matrix of the stored gradients, so the bootstrap is exact and cheap; the
gradients are held until then: (1 + methods) x R x parameters float32 (the mini model, 3 methods, R = 40: 0.6 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vppo import package_versions
from vppo.catalog import METHOD_PRESETS, MethodPreset, get_method
from vppo.errors import InputError, require_dir
from vppo.fileio import write_json_atomic
from vppo.training.recipes import preset_default

if TYPE_CHECKING:
    import torch

#: What ``vppo gradient-variance`` writes.
SCHEMA_ID = "vppo.gradient_variance/1"
#: The baseline weighting's name in the results: every valid token, alpha = 1 (GRPO's token-mean).
BASELINE = "grpo"
#: The method whose rollout every replicate samples (dynamic sampling, masking, dependency estimator).
ROLLOUT_METHOD = "vppo"
#: Compared by default: every TGF/TAS preset of the registry with the official dependency pass (k3, patch masking).
DEFAULT_METHODS = tuple(name for name, preset in METHOD_PRESETS.items() if (preset.use_tgf or preset.use_tas)
                        and preset.dependency_estimator == preset_default("dependency_estimator")
                        and preset.masking == preset_default("masking"))


class GradientVarianceError(InputError, ValueError):
    """A bad option or input of ``vppo gradient-variance``; the message names it."""


@dataclass
class GradientVarianceRequest:
    """The arguments of ``vppo gradient-variance``; ``methods`` are names or presets (tests build their own)."""

    checkpoint: Path
    data: Path
    recipe: str = "mini"
    methods: tuple = DEFAULT_METHODS
    replicates: int = 40
    prompts: int = 2
    samples: int = 8
    seed: int = 0
    max_new_tokens: int = 32
    bootstrap: int = 2000


# ------------------------------------------------------------------------------------------------ inputs

def method_presets(methods) -> list[MethodPreset]:
    """Presets of the compared methods; each must filter or scale gradients (TGF or TAS), names unique."""
    presets = []
    for method in methods:
        try:
            preset = method if isinstance(method, MethodPreset) else get_method(str(method).strip())
        except ValueError as exc:
            raise GradientVarianceError(f"--methods: {exc}") from None
        if not preset.needs_masked_pass:
            raise GradientVarianceError(f"--methods {preset.name}: neither TGF nor TAS, its gradient is the "
                                        f"{BASELINE} baseline's")
        presets.append(preset)
    names = [p.name for p in presets]
    if not presets or len(set(names)) != len(names) or BASELINE in names:
        raise GradientVarianceError(f"--methods {','.join(names)}: need one or more distinct TGF/TAS methods")
    return presets


def measurement_overrides(request: GradientVarianceRequest, tas_group_responses: int) -> dict:
    """Recipe keys that make one rollout = one update of G prompts x n responses in one forward pass; TAS's mu
    group is the recipe's ``tas_group_responses``, or the whole update where that is smaller than one group."""
    rows = request.prompts * request.samples
    return {"rollout_batch_prompts": request.prompts, "update_batch_prompts": request.prompts,
            "num_generations": request.samples, "micro_batch_responses": rows,
            "tas_group_responses": min(int(tas_group_responses), rows),
            "max_completion_length": request.max_new_tokens, "max_steps": request.replicates, "save_steps": 1,
            "logging_steps": 1}


def measurement_recipe(request: GradientVarianceRequest):
    """(the request's recipe with :func:`measurement_overrides`, those overrides); a RecipeError names the key."""
    from vppo.training.recipes import load_recipe

    overrides = measurement_overrides(request, load_recipe(request.recipe).tas_group_responses)
    return load_recipe(request.recipe, overrides), overrides


def check_request(request: GradientVarianceRequest) -> None:
    for flag, value, low in (("--replicates", request.replicates, 3), ("--prompts", request.prompts, 1),
                             ("--samples", request.samples, 2), ("--max-new-tokens", request.max_new_tokens, 1),
                             ("--bootstrap", request.bootstrap, 0)):
        if value < low:
            raise GradientVarianceError(f"{flag} {value}: must be at least {low}")
    require_dir(request.data, "--data")
    require_dir(request.checkpoint, "checkpoint")


# ------------------------------------------------------------------------------------------- gradients

def flat_gradient(loss, params) -> torch.Tensor:
    """d loss / d params, flattened into one float32 vector on the CPU (zeros for parameters it does not reach)."""
    import torch

    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).detach().reshape(-1).float().cpu()
                      for p, g in zip(params, grads)])


@dataclass
class ReplicateGradients:
    """One replicate: the flat gradient of each weighting (baseline first) and each method's token counts."""

    gradients: dict  # name -> float32 [P]
    kept_tokens: dict  # name -> tokens with gradient (TGF-kept valid tokens)
    kept_alpha_sq: dict  # name -> sum over kept tokens of alpha^2
    valid_tokens: int
    responses: int


def replicate_gradients(trainer, batch: dict, presets: list[MethodPreset]) -> ReplicateGradients:
    """The baseline's and every preset's policy gradient on ``batch`` (a scored rollout of ``trainer``): one
    forward pass with gradient, one backward per weighting."""
    import torch

    from vppo.algorithm import policy_loss
    from vppo.training.batch import micro_batch_rows, update_rows
    from vppo.training.dependency import rollout_weights

    mask = batch["completion_mask"]
    rows = list(range(mask.shape[0]))
    updates = update_rows(micro_batch_rows(rows, trainer.args.steps_per_generation),
                          trainer.args.gradient_accumulation_steps)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    logps, _ = trainer.policy_logps(trainer.model, batch)
    old = logps.detach()  # on-policy: ratio 1, no clip active

    def gradient(token_mask, alpha):
        loss, _ = policy_loss(logps, old, batch["advantages"], mask, token_mask=token_mask, alpha=alpha,
                              entropy_coef=0.0)
        return flat_gradient(loss, params)

    valid = mask.bool()
    n_valid = int(valid.sum())
    gradients, kept, kept_alpha_sq = {BASELINE: gradient(None, None)}, {BASELINE: n_valid}, {BASELINE: float(n_valid)}
    for preset in presets:
        token_mask, alpha = rollout_weights(preset, batch["dependency"], mask, updates, trainer.tas_group_responses)
        gradients[preset.name] = gradient(token_mask, alpha)
        weight = valid.float() if token_mask is None else token_mask * valid
        factor = torch.ones(mask.shape[0], device=mask.device) if alpha is None else alpha
        kept[preset.name] = int(weight.sum())
        kept_alpha_sq[preset.name] = float((weight * factor.unsqueeze(1) ** 2).sum())
    return ReplicateGradients(gradients, kept, kept_alpha_sq, n_valid, int(mask.shape[0]))


# ------------------------------------------------------------------------------------------ statistics

def gram_matrix(stacked: torch.Tensor, chunk: int = 1 << 18) -> np.ndarray:
    """float64 X X^T of the rows of ``stacked`` [N, P], over column chunks (no float64 copy of X)."""
    import torch

    gram = torch.zeros(stacked.shape[0], stacked.shape[0], dtype=torch.float64)
    for start in range(0, stacked.shape[1], chunk):
        piece = stacked[:, start:start + chunk].double()
        gram += piece @ piece.T
    return gram.numpy()


def covariance_trace(gram: np.ndarray, index: np.ndarray) -> float:
    """Trace of the unbiased sample covariance of the vectors ``index`` picks (repeats allowed), from their Gram."""
    sub = gram[np.ix_(index, index)]
    n = len(index)
    return float((np.trace(sub) - sub.sum() / n) / (n - 1))


def squared_deviations(gram: np.ndarray) -> np.ndarray:
    """||g_r - mean||^2 of every vector, from their Gram matrix."""
    n = gram.shape[0]
    return np.diag(gram) - 2.0 * gram.mean(1) + gram.sum() / n ** 2


def variance_statistics(gram: np.ndarray, names: list[str], replicates: int, bootstrap: int, seed: int) -> dict:
    """Per weighting (``names[0]`` the baseline), from the Gram matrix of all gradients, name-major rows."""
    blocks = {name: slice(i * replicates, (i + 1) * replicates) for i, name in enumerate(names)}
    base = gram[blocks[names[0]], blocks[names[0]]]
    every = np.arange(replicates)
    base_var = covariance_trace(base, every)
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, replicates, replicates) for _ in range(bootstrap)]
    base_boot = np.array([covariance_trace(base, idx) for idx in resamples])
    base_dev = squared_deviations(base)
    base_mean_sq = float(base.sum()) / replicates ** 2
    out = {}
    for name in names:
        own = gram[blocks[name], blocks[name]]
        variance = covariance_trace(own, every)
        ratio = variance / base_var
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.array([covariance_trace(own, idx) for idx in resamples]) / base_boot
        boot = boot[np.isfinite(boot)]  # a resample of one repeated replicate has no variance (tiny R only)
        # delta method for a ratio of paired means (as vppo.algorithm_checks): var(r) ~ var(x - r y) / (n mean(y)^2)
        dev = squared_deviations(own)
        resid = dev - (dev.mean() / base_dev.mean()) * base_dev
        mean_sq = float(own.sum()) / replicates ** 2
        signal = mean_sq - variance / replicates
        cross = float(gram[blocks[name], blocks[names[0]]].sum()) / replicates ** 2
        out[name] = {
            "variance": variance, "variance_ratio": ratio,
            "stderr": float(boot.std(ddof=1)) if boot.size > 1 else None,
            "stderr_delta": float(resid.std(ddof=1) / (math.sqrt(replicates) * base_dev.mean())),
            "mean_grad_sq_norm": mean_sq, "signal_sq_norm": signal, "signal_to_noise": signal / variance,
            "cosine_to_baseline": cross / math.sqrt(mean_sq * base_mean_sq) if mean_sq > 0 and base_mean_sq > 0 else None,
        }
    return out


# ----------------------------------------------------------------------------------------- measurement

def _progress(replicates: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(range(replicates), desc="gradient-variance replicates", file=sys.stderr, disable=not enabled)


@contextmanager
def rollout_sampler(request: GradientVarianceRequest, recipe, overrides: dict, reward=None):
    """A :class:`vppo.training.runner.PreparedRun` whose trainer samples the request's rollouts (VPPO's preset,
    the recipe's sampling, one update per rollout), in a throw-away work dir; seeded with the request's seed."""
    from transformers import set_seed

    from vppo.training.runner import TrainRequest, build_trainer, cpu_threads

    with cpu_threads(recipe), tempfile.TemporaryDirectory(prefix="vppo-gradvar-") as work:
        train_request = TrainRequest(model=Path(request.checkpoint), data=Path(request.data), recipe=request.recipe,
                                     method=ROLLOUT_METHOD, work_dir=Path(work), out=Path(work) / "unused",
                                     seed=request.seed, overrides=overrides)
        run = build_trainer(train_request, recipe, reward=reward)
        run.trainer.model.train()  # dropout is off (disable_dropout); TRL samples in training mode
        set_seed(request.seed)
        yield run


def sample_rollout(trainer, replicate: int, rows: int) -> dict:
    """The next scored rollout of ``rows`` responses from the trainer's data stream, masked as training step
    ``replicate`` would mask it (the masked pass seeds its masks by step)."""
    trainer.state.global_step = replicate
    return trainer.scored_rollout(trainer.next_examples(rows))


def method_summary(name: str, statistics: dict, records: list[ReplicateGradients], preset) -> dict:
    """One weighting's figures: the variance statistics with k, E[alpha^2] and the prediction k * E[alpha^2]."""
    valid = sum(rec.valid_tokens for rec in records)
    kept = sum(rec.kept_tokens[name] for rec in records)
    k, alpha_sq = kept / valid, sum(rec.kept_alpha_sq[name] for rec in records) / max(kept, 1)
    return {**statistics, "k": k, "E_alpha_sq": alpha_sq, "predicted_ratio": k * alpha_sq,
            "relative_gap": statistics["variance_ratio"] / (k * alpha_sq) - 1.0,
            "preset": None if preset is None else dataclasses.asdict(preset)}


def measure(request: GradientVarianceRequest, reward=None, progress: bool = True) -> dict:
    """Run the measurement (see the module docstring); ``reward`` is for tests (a steered grader)."""
    import torch

    from vppo.modeling import checkpoint_sha256

    start = time.perf_counter()
    check_request(request)
    presets = method_presets(request.methods)
    recipe, overrides = measurement_recipe(request)
    names, replicates = [BASELINE, *(p.name for p in presets)], request.replicates
    records: list[ReplicateGradients] = []
    stacked = None  # name-major rows: [baseline x R, method 1 x R, ...]
    with rollout_sampler(request, recipe, overrides, reward) as run:
        trainer, loop_start = run.trainer, time.perf_counter()
        for r in _progress(replicates, progress):
            record = replicate_gradients(trainer, sample_rollout(trainer, r, request.prompts * request.samples),
                                         presets)
            if stacked is None:
                stacked = torch.empty(len(names) * replicates, record.gradients[BASELINE].numel())
            for i, name in enumerate(names):
                stacked[i * replicates + r] = record.gradients[name]
            record.gradients = {}
            records.append(record)
        loop_seconds = time.perf_counter() - loop_start
        rollout = {key: trainer._metrics["train"].get(key, []) for key in ("accuracy", "filtered_groups",
                                                                             "sampling_rounds")}
        device = str(trainer.accelerator.device)
    parameters = stacked.shape[1]
    statistics = variance_statistics(gram_matrix(stacked), names, replicates, request.bootstrap, request.seed)
    del stacked
    by_name = {p.name: p for p in presets}
    return {
        "schema": SCHEMA_ID, "baseline": BASELINE, "method_order": names,
        "methods": {name: method_summary(name, statistics[name], records, by_name.get(name)) for name in names},
        "replicates": replicates, "prompts": request.prompts, "samples": request.samples,
        "rollout_method": ROLLOUT_METHOD, "recipe": request.recipe, "recipe_overrides": overrides,
        "sampling": {"temperature": recipe.temperature, "top_p": recipe.top_p,
                     "max_new_tokens": request.max_new_tokens, "n": request.samples},
        "parameters": parameters, "valid_tokens": sum(rec.valid_tokens for rec in records),
        "responses": sum(rec.responses for rec in records), "rollout": rollout,
        "bootstrap": request.bootstrap, "seed": request.seed,
        "checkpoint": str(request.checkpoint), "checkpoint_sha256": checkpoint_sha256(Path(request.checkpoint)),
        "data": run.data_info, "device": device, "versions": package_versions("trl", "accelerate"),
        "wall_time_s": round(time.perf_counter() - start, 3),
        "seconds_per_replicate": round(loop_seconds / replicates, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_table(result: dict) -> str:
    """The per-method figures as a small text table."""
    header = f"{'method':<16}{'ratio':>9}{'+-se':>8}{'predicted':>11}{'k':>7}{'E[a^2]':>8}{'SNR':>10}{'cos':>7}"
    lines = [header]
    for name in result["method_order"]:
        m = result["methods"][name]
        se = "" if m["stderr"] is None else f"{m['stderr']:.3f}"
        cos = "" if m["cosine_to_baseline"] is None else f"{m['cosine_to_baseline']:.3f}"
        lines.append(f"{name:<16}{m['variance_ratio']:>9.3f}{se:>8}{m['predicted_ratio']:>11.3f}{m['k']:>7.3f}"
                     f"{m['E_alpha_sq']:>8.3f}{m['signal_to_noise']:>10.4f}{cos:>7}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="HF checkpoint directory of the policy")
    parser.add_argument("--data", type=Path, required=True, help="training data directory (vppo prepare-data train)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON path")
    parser.add_argument("--recipe", default="mini", help="recipe of the sampling (temperature, dynamic sampling "
                        "cap, image bounds): mini | smoke | 7b | 32b | PATH.yaml")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="TGF/TAS methods compared with the "
                        f"{BASELINE} weighting, comma-separated")
    parser.add_argument("--replicates", type=int, default=40, help="independent rollout batches R")
    parser.add_argument("--prompts", type=int, default=2, help="prompts G per rollout batch")
    parser.add_argument("--samples", type=int, default=8, help="responses n per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples for the errors")


def run(args: argparse.Namespace) -> int:
    request = GradientVarianceRequest(
        checkpoint=args.checkpoint, data=args.data, recipe=args.recipe,
        methods=tuple(m for m in args.methods.split(",") if m.strip()), replicates=args.replicates,
        prompts=args.prompts, samples=args.samples, seed=args.seed, max_new_tokens=args.max_new_tokens,
        bootstrap=args.bootstrap)
    # InputError (bad option, data, checkpoint, recipe; rollouts dynamic sampling cannot fill): one line, exit 2
    # (vppo.cli)
    result = measure(request)
    write_json_atomic(args.out, result)
    print(format_table(result))
    print(f"vppo gradient-variance: {request.replicates} replicates of {request.prompts}x{request.samples} "
          f"responses in {result['wall_time_s']:.1f} s ({result['seconds_per_replicate']:.2f} s per replicate); "
          f"wrote {args.out}")
    return 0
