"""``vppo analyze``: token vision-dependency statistics of a checkpoint (the paper's two motivating figures).

For a few evaluation prompts, sample responses with plain transformers, score every response token with
the real image and with a masked copy (``vppo.masking``, patch blackening by default), and turn the
log-prob pair into a dependency per token (``vppo.algorithm.token_vision_dependency``: k3 by default, the
full-vocabulary KL with ``--estimator kl``). The JSON (schema ``vppo.analysis/1``) holds:

- ``token_dependency``: the distribution over all response tokens (linear and log-spaced histograms,
  quantiles, fraction of tokens above thresholds, share of the total dependency carried by the top
  10% / 40% of tokens, and ``concentration``: that share for the top 1%, 2%, ..., 100%, the whole curve):
  the paper's claim that most tokens depend little on the image and a few a lot;
- ``trajectory_mean_dependency``: each response's mean token dependency (list, histogram, spread): the
  claim that responses differ in how much they rely on the image;
- ``by_role`` and ``by_benchmark``: each token role's (the boxed answer, colour words in the reasoning, the
  rest) and each benchmark's share of the tokens and of the total dependency (:func:`breakdown`): e.g. the
  mini study's text-only control against its held-out grid questions;
- provenance: checkpoint and its weights' sha256, data and its manifest checksums, prompts used,
  sampling parameters, masking, estimator, seed, versions, wall time.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vppo import package_versions
from vppo.errors import InputError

#: The schema of what ``vppo analyze`` writes (validated by vppo.reporting.results_io when read).
ANALYSIS_SCHEMA_ID = "vppo.analysis/1"

QUANTILES = (0.5, 0.9, 0.95, 0.99)
THRESHOLDS = (0.001, 0.01, 0.1, 1.0)
TOP_SHARES = (0.1, 0.4)
#: The concentration curve's top fractions of tokens: 1%, 2%, ..., 100%.
CONCENTRATION_FRACTIONS = tuple(round(0.01 * i, 2) for i in range(1, 101))
LOG_MIN = 1e-6


def _histogram(values: np.ndarray, edges: np.ndarray) -> dict:
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _linear_edges(values: np.ndarray, bins: int) -> np.ndarray:
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    return np.linspace(0.0, top, bins + 1)


def _stats(values: np.ndarray) -> dict:
    if not values.size:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def top_count(fraction: float, n: int) -> int:
    """How many tokens the top ``fraction`` of ``n`` is: ceil(fraction * n), at least 1. Rounded first, so float
    noise does not add a token (0.1 * 30 is 3.0000000000000004 in floating point, and means 3)."""
    return max(1, math.ceil(round(fraction * n, 9)))


def top_shares(tokens: np.ndarray, fractions) -> list[float | None]:
    """Per fraction, the share of the total dependency carried by the largest top_count(fraction) tokens
    (None when the total is 0: no share is defined)."""
    cumulative = np.cumsum(np.sort(tokens)[::-1])
    total = float(cumulative[-1]) if cumulative.size else 0.0
    if total <= 0:
        return [None for _ in fractions]
    return [float(cumulative[top_count(f, tokens.size) - 1] / total) for f in fractions]


def summarize(per_trajectory: list[list[float]], bins: int = 40) -> dict:
    """The two distributions from each trajectory's per-token dependencies (finite, >= 0)."""
    arrays = [np.asarray(t, dtype=np.float64) for t in per_trajectory]
    tokens = np.concatenate(arrays) if arrays else np.zeros(0)
    if not np.isfinite(tokens).all():
        raise ValueError("token dependencies contain non-finite values")
    means = np.asarray([a.mean() for a in arrays if a.size], dtype=np.float64)
    top = max(float(tokens.max()) if tokens.size else 0.0, LOG_MIN * 10)
    log_edges = np.logspace(np.log10(LOG_MIN), np.log10(top), bins + 1)
    log_edges[0], log_edges[-1] = LOG_MIN, top  # exact ends: 10**log10(x) may round below x and drop the max
    token_dependency = {
        "n_tokens": int(tokens.size), "n_trajectories": len(arrays), **_stats(tokens),
        "quantiles": {str(q): (float(np.quantile(tokens, q)) if tokens.size else None) for q in QUANTILES},
        "fraction_above": {str(t): (float((tokens > t).mean()) if tokens.size else None) for t in THRESHOLDS},
        "mass_share_top": dict(zip(map(str, TOP_SHARES), top_shares(tokens, TOP_SHARES))),
        "concentration": {"top_fraction": list(CONCENTRATION_FRACTIONS),
                          "share": top_shares(tokens, CONCENTRATION_FRACTIONS)},
        "histogram": _histogram(tokens, _linear_edges(tokens, bins)),
        "log_histogram": {**_histogram(tokens, log_edges), "below_min": int((tokens < LOG_MIN).sum()),
                          "min_edge": LOG_MIN},
    }
    mean_stats = _stats(means)
    spread = (mean_stats["std"] / mean_stats["mean"]) if means.size and mean_stats["mean"] > 0 else None
    trajectory = {"values": [float(m) for m in means], **mean_stats, "coefficient_of_variation": spread,
                  "histogram": _histogram(means, _linear_edges(means, min(bins, 20)))}
    return {"token_dependency": token_dependency, "trajectory_mean_dependency": trajectory}


def breakdown(per_trajectory: list[list[float]], labels: list[list[str]]) -> dict:
    """Per label (a token's role or its benchmark): tokens, mean dependency, and the label's share of the total
    dependency and of the tokens. A label's dependency share above its token share means it carries more
    than its number: the paper's claim, measured on the answer tokens vs the rest, or a benchmark vs another."""
    values = np.concatenate([np.asarray(t, dtype=np.float64) for t in per_trajectory]) if per_trajectory else np.zeros(0)
    flat = np.asarray([label for row in labels for label in row], dtype=object)
    if flat.size != values.size:
        raise ValueError(f"{flat.size} labels for {values.size} token dependencies")
    total, out = float(values.sum()), {}
    for label in sorted(set(flat)):
        mine = values[flat == label]
        out[label] = {"n_tokens": int(mine.size), "mean": float(mine.mean()),
                      "share_of_dependency": float(mine.sum() / total) if total > 0 else None,
                      "share_of_tokens": float(mine.size / values.size)}
    return out


def pick_rows(data_dir: Path, benchmark_keys: list[str], n_prompts: int) -> list[tuple[str, object]]:
    """Usable rows taken round-robin over the benchmarks, in file order: (benchmark, EvalRow)."""
    from vppo.data.eval_data import scan_benchmark

    queues = {key: list(scan_benchmark(data_dir, key).rows) for key in benchmark_keys}
    picked: list[tuple[str, object]] = []
    while len(picked) < n_prompts and any(queues.values()):
        for key in benchmark_keys:
            if queues[key] and len(picked) < n_prompts:
                picked.append((key, queues[key].pop(0)))
    return picked


class SampledResponses:
    """One prompt's sampled responses, ready to be scored under any dependency pass: the encoded prompt, its
    prepared images, the response ids and mask [n, T], and each valid token's role."""

    def __init__(self, prompt: dict, pictures: list, ids, mask, roles: list[list[str]]):
        self.prompt, self.pictures, self.ids, self.mask, self.roles = prompt, pictures, ids, mask, roles


def sample_responses(model, processor, prompt_text: str, images: list, args) -> SampledResponses:
    """``args.samples`` responses to one prompt, sampled with plain transformers (torch's RNG, never numpy's), and
    the role of each valid token (:func:`vppo.data.mini_task.token_roles`: the boxed answer, colour words of the
    reasoning, the rest)."""
    import torch
    from PIL import Image

    from vppo.data.mini_task import token_roles
    from vppo.eval_images import prepare_image
    from vppo.rollout import encode_prompts, split_generation

    device = next(model.parameters()).device
    pictures = []
    for path in images:
        with Image.open(path) as img:
            pictures.append(prepare_image(img))
    prompt = encode_prompts(processor, [prompt_text], [pictures])
    tok = processor.tokenizer
    eos = model.generation_config.eos_token_id
    eos_ids = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                      tok.convert_tokens_to_ids("<|im_end|>")})
    with torch.no_grad():
        sequences = model.generate(**{k: v.to(device) for k, v in prompt.items()}, do_sample=True,
                                   temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                   max_new_tokens=args.max_new_tokens, num_return_sequences=args.samples,
                                   pad_token_id=tok.pad_token_id)
    ids, mask = split_generation(sequences.cpu(), prompt["input_ids"].shape[1], eos_ids, tok.pad_token_id)
    valid = mask.bool()
    roles = [token_roles([tok.decode([int(t)]) for t in ids[i][valid[i]]]) for i in range(ids.shape[0])]
    return SampledResponses(prompt, pictures, ids, mask, roles)


def _pass_outputs(model, batch, estimator: str, temperature: float):
    """What the estimator compares, scored at the sampling temperature as the trainer scores its rollouts:
    full logits for the KL, the sampled tokens' log-probs for k3."""
    from vppo.rollout import response_logits, response_logprobs

    if estimator == "kl":
        return response_logits(model, batch) / temperature
    return response_logprobs(model, batch, temperature=temperature)


def _response_batch(model, prompt: dict, sampled: SampledResponses):
    from vppo.rollout import join_prompt_and_response, repeat_prompt_batch

    device = next(model.parameters()).device
    batch = join_prompt_and_response(repeat_prompt_batch(prompt, sampled.ids.shape[0]), sampled.ids, sampled.mask)
    batch.inputs = {k: v.to(device) for k, v in batch.inputs.items()}
    batch.response_ids, batch.response_mask = batch.response_ids.to(device), batch.response_mask.to(device)
    return batch


def masked_prompt(processor, sampled: SampledResponses, strategy: str, rng: np.random.Generator) -> dict:
    """The trainer's masked pass: same prompt ids, only the pixels of the masked images change."""
    from vppo.masking import mask_image
    from vppo.modeling import masked_pixel_values, processor_family

    params = processor_family(processor).masking_params(strategy)  # the model's patch size, as in training
    masked = [mask_image(p, strategy, rng=rng, **params) for p in sampled.pictures]
    return {**sampled.prompt, "pixel_values": masked_pixel_values(processor.image_processor, [masked],
                                                                  sampled.prompt["image_grid_thw"])}


def score_responses(model, sampled: SampledResponses, blind_prompt: dict, estimator: str, temperature: float,
                    real=None) -> tuple[list[list[float]], object]:
    """Per-response valid-token dependencies of ``sampled`` with ``blind_prompt``'s images, and the real-image
    pass's outputs (pass them back as ``real`` to score another masking with the same estimator)."""
    import torch

    from vppo.algorithm import token_vision_dependency

    with torch.no_grad():
        batch = _response_batch(model, sampled.prompt, sampled)
        if real is None:
            real = _pass_outputs(model, batch, estimator, temperature)
        blind = _pass_outputs(model, _response_batch(model, blind_prompt, sampled), estimator, temperature)
        dep = token_vision_dependency(real, blind, batch.response_mask, estimator=estimator).cpu()
    valid = sampled.mask.bool()
    return [dep[i][valid[i]].tolist() for i in range(dep.shape[0])], real


def dependency_for_prompt(model, processor, prompt_text: str, images: list, args, rng: np.random.Generator):
    """Sample ``args.samples`` responses to one prompt; return per-response valid-token dependencies (masking
    ``args.mask_strategy`` drawn from ``rng``, estimator ``args.estimator``) and the role of each token."""
    sampled = sample_responses(model, processor, prompt_text, images, args)
    blind = masked_prompt(processor, sampled, args.mask_strategy, rng)
    deps, _ = score_responses(model, sampled, blind, args.estimator, args.temperature)
    return deps, sampled.roles


def _data_provenance(data_dir: Path, keys: list[str]) -> dict:
    """Per-benchmark checksums, computed now and checked against manifest.json where there is one."""
    from vppo.data.eval_data import data_checksum, read_manifest

    source = "verified against manifest" if read_manifest(data_dir) else "computed (no manifest)"
    return {"path": str(data_dir), "sha256": {k: data_checksum(data_dir, k) for k in keys}, "sha256_source": source}


def _masking_params(processor, strategy: str) -> dict:
    """The keyword arguments the masking strategy ran with: its defaults and the model family's (the square)."""
    from vppo.modeling import processor_family

    return {**_strategy_defaults(strategy), **processor_family(processor).masking_params(strategy)}


def _strategy_defaults(strategy: str) -> dict:
    """The keyword defaults the masking strategy runs with (e.g. patch_size=14, p=0.5 for "patch")."""
    import inspect

    from vppo.masking import MASKING_STRATEGIES

    parameters = inspect.signature(MASKING_STRATEGIES[strategy]).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


@dataclass
class AnalysisInputs:
    """What every analysis of one checkpoint loads first: the checkpoint, its rows and its policy."""
    checkpoint: Path
    data_dir: Path
    keys: list[str]
    rows: list
    model: object
    processor: object
    device: str


def load_inputs(args: argparse.Namespace) -> AnalysisInputs:
    """The checkpoint and its policy (bf16 on a GPU, fp32 on CPU) and the first ``args.n_prompts`` rows."""
    import torch

    from vppo.catalog import resolve_benchmarks
    from vppo.modeling import load_policy, load_processor, verify_checkpoint_dir

    checkpoint = verify_checkpoint_dir(args.checkpoint)
    data_dir = Path(args.data)
    keys = [b.key for b in resolve_benchmarks(args.benchmarks)]
    rows = pick_rows(data_dir, keys, args.n_prompts)
    if not rows:
        raise InputError(f"{data_dir}: no usable rows in benchmarks {', '.join(keys)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_policy(checkpoint, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device).eval()
    return AnalysisInputs(checkpoint, data_dir, keys, rows, model, load_processor(checkpoint), device)


def provenance(args: argparse.Namespace, inputs: AnalysisInputs, start: float) -> dict:
    """The record every analysis output carries: model, method, sampling, seed, rows, checkpoint, data, versions."""
    from vppo.modeling import checkpoint_sha256

    checkpoint, rows = inputs.checkpoint, inputs.rows
    return {
        "model": args.model_label or checkpoint.resolve().parent.name,
        "method": args.method_label or checkpoint.resolve().name,
        "sampling": {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                     "max_new_tokens": args.max_new_tokens, "n": args.samples},
        "seed": args.seed, "n_prompts": len(rows), "benchmarks": inputs.keys, "device": inputs.device,
        "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "data": _data_provenance(inputs.data_dir, sorted({b for b, _ in rows})),
        "versions": package_versions(), "wall_time_s": round(time.time() - start, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def analyze(args: argparse.Namespace) -> dict:
    import torch

    from vppo.progress import progress

    start = time.time()
    inputs = load_inputs(args)
    model, processor, rows = inputs.model, inputs.processor, inputs.rows
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    per_trajectory, trajectories, roles, benches = [], [], [], []
    for bench, row in progress(rows, desc="analyze", unit="prompt"):
        deps_per_sample, roles_per_sample = dependency_for_prompt(model, processor, row.prompt, row.images, args, rng)
        for sample, (deps, roles_of_sample) in enumerate(zip(deps_per_sample, roles_per_sample)):
            per_trajectory.append(deps)
            roles.append(roles_of_sample)
            benches.append([bench] * len(deps))
            trajectories.append({"benchmark": bench, "row_id": row.row_id, "sample": sample, "n_tokens": len(deps),
                                 "mean_dependency": float(np.mean(deps)) if deps else None})
    summary = summarize(per_trajectory, bins=args.bins)
    summary["by_role"], summary["by_benchmark"] = breakdown(per_trajectory, roles), breakdown(per_trajectory, benches)
    return {"schema": ANALYSIS_SCHEMA_ID, **provenance(args, inputs, start), "estimator": args.estimator, **summary,
            "trajectories": trajectories,
            "masking": {"strategy": args.mask_strategy, "params": _masking_params(processor, args.mask_strategy)}}
