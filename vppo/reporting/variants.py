"""``vppo analyze --variants``: one checkpoint's sampled responses scored under several dependency passes.

A variant is ``<masking>:<estimator>`` (``patch:k3`` is the published pass; masking from
:data:`vppo.catalog.MASKING_NAMES`, estimator from :data:`vppo.catalog.DEPENDENCY_ESTIMATOR_NAMES`). Each prompt's
responses are sampled once (the same responses ``vppo analyze`` samples with the same seed) and scored under
every variant; a masking strategy's masked images are drawn once per prompt from a generator seeded by (seed,
prompt, strategy), so two variants with the same masking differ only in their estimator. The JSON (schema
``vppo.analysis_variants/1``) answers "does the masking or the estimator change which tokens TGF keeps?":

- per variant, the distribution (median, mean, share of the total dependency carried by the top 10% / 40% of
  tokens), the per-token mean per benchmark and, where both exist, the text-only control's over the held-out
  grid's (``control_to_heldout``);
- per response, its mean dependency under each variant (what TAS scales its advantage by);
- per variant against the reference ``patch:k3``: the per-response TGF selection (the trainer's
  :func:`vppo.algorithm.tgf_mask` at vppo's keep ratio) compared by Jaccard index and by the share of kept tokens
  kept by both, and the Spearman rank correlation of the token scores (pooled, and the mean over responses);
- provenance: checkpoint and its sha256, data checksums, variants, seed, sampling parameters, versions.
"""

from __future__ import annotations

import time

import numpy as np

from vppo.errors import OptionError

VARIANTS_SCHEMA_ID = "vppo.analysis_variants/1"
#: The published pass (the official code): the variant every other is compared with.
REFERENCE_VARIANT = ("patch", "k3")
#: Benchmarks whose per-token means give ``control_to_heldout`` (the mini study's text-only control and grid).
CONTROL_BENCHMARK, HELDOUT_BENCHMARK = "mini_control", "mini_heldout"


def variant_name(variant: tuple[str, str]) -> str:
    return f"{variant[0]}:{variant[1]}"


def parse_variants(spec: str) -> list[tuple[str, str]]:
    """``"patch:k3,grey:k3,patch:kl"`` -> [(masking, estimator), ...], the reference ``patch:k3`` first (added
    when absent); a malformed, unknown or repeated item raises OptionError naming it."""
    from vppo.catalog import DEPENDENCY_ESTIMATOR_NAMES, MASKING_NAMES

    variants: list[tuple[str, str]] = []
    for item in (part.strip() for part in spec.split(",")):
        masking, sep, estimator = item.partition(":")
        if not sep or masking not in MASKING_NAMES or estimator not in DEPENDENCY_ESTIMATOR_NAMES:
            raise OptionError(f"--variants: {item!r} is not <masking>:<estimator> with masking one of "
                             f"{', '.join(MASKING_NAMES)} and estimator one of {', '.join(DEPENDENCY_ESTIMATOR_NAMES)}")
        if (masking, estimator) in variants:
            raise OptionError(f"--variants: {item!r} is named twice")
        variants.append((masking, estimator))
    return [REFERENCE_VARIANT, *(v for v in variants if v != REFERENCE_VARIANT)]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their positions ([10, 20, 10] -> [1.5, 3, 1.5])."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # each distinct value's last position, ascending
    return (last - (counts - 1) / 2.0)[inverse]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho (Pearson's r of the average ranks); None when either side is constant or has under 2 values."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def kept_tokens(dependencies: list[float], keep_ratio: float) -> np.ndarray:
    """Bool [n]: the tokens TGF keeps in one response (the trainer's own selection, ties to the earlier token)."""
    import torch

    from vppo.algorithm import tgf_mask

    row = torch.tensor([dependencies], dtype=torch.float32)
    return tgf_mask(row, torch.ones_like(row), keep_ratio)[0].numpy().astype(bool)


def compare_to_reference(reference: list[list[float]], other: list[list[float]], keep_ratio: float) -> dict:
    """How ``other``'s per-token scores of the same responses agree with ``reference``'s: TGF selections (mean
    per-response Jaccard; kept by both / kept, pooled, and what two random selections would share, k/n per
    response) and rank correlation (pooled over all tokens; mean over the responses where it is defined)."""
    if [len(r) for r in reference] != [len(o) for o in other]:
        raise ValueError("variants scored different responses (token counts differ)")
    jaccards, both, kept, chance, per_response = [], 0, 0, 0.0, []
    for ref, oth in zip(reference, other):
        if not ref:
            continue
        a, b = kept_tokens(ref, keep_ratio), kept_tokens(oth, keep_ratio)
        jaccards.append(float((a & b).sum() / (a | b).sum()))
        both, kept = both + int((a & b).sum()), kept + int(a.sum())
        chance += float(a.sum()) ** 2 / len(ref)  # expected shared tokens of two random size-k picks
        rho = _spearman(np.asarray(ref), np.asarray(oth))
        if rho is not None:
            per_response.append(rho)
    pooled = [np.concatenate([np.asarray(r, dtype=np.float64) for r in side] or [np.zeros(0)])
              for side in (reference, other)]
    return {"kept_jaccard_mean": float(np.mean(jaccards)) if jaccards else None,
            "kept_by_both_share": both / kept if kept else None,
            "kept_by_both_share_at_chance": chance / kept if kept else None,
            "spearman_pooled": _spearman(*pooled),
            "spearman_per_response_mean": float(np.mean(per_response)) if per_response else None,
            "n_responses_ranked": len(per_response)}


def describe_variant(per_trajectory: list[list[float]], benches: list[list[str]]) -> dict:
    """The distribution's headline numbers and the per-benchmark per-token means of one variant's scores."""
    from vppo.reporting.analysis import breakdown, summarize

    token = summarize(per_trajectory)["token_dependency"]
    by_benchmark = {key: part["mean"] for key, part in breakdown(per_trajectory, benches).items()}
    control, heldout = by_benchmark.get(CONTROL_BENCHMARK), by_benchmark.get(HELDOUT_BENCHMARK)
    return {"n_tokens": token["n_tokens"], "median": token["quantiles"]["0.5"], "mean": token["mean"],
            "mass_share_top": token["mass_share_top"], "mean_by_benchmark": by_benchmark,
            "control_to_heldout": control / heldout if control is not None and heldout else None}


def variant_rng(seed: int, prompt_index: int, masking: str) -> np.random.Generator:
    """The masked images of one prompt under one strategy: shared by that strategy's estimators."""
    from vppo.catalog import MASKING_NAMES

    return np.random.default_rng([seed, prompt_index, MASKING_NAMES.index(masking)])


def score_variants(model, processor, rows, variants: list[tuple[str, str]], args) -> tuple[dict, list, list]:
    """({variant name: per-response token dependencies}, per-response benchmark labels, trajectory records)."""
    from vppo.reporting.analysis import masked_prompt, sample_responses, score_responses

    scores: dict[str, list[list[float]]] = {variant_name(v): [] for v in variants}
    benches, trajectories = [], []
    for index, (bench, row) in enumerate(rows):
        sampled = sample_responses(model, processor, row.prompt, row.images, args)
        blind = {masking: masked_prompt(processor, sampled, masking, variant_rng(args.seed, index, masking))
                 for masking in dict.fromkeys(m for m, _ in variants)}
        real: dict[str, object] = {}  # the real-image pass, once per estimator
        for masking, estimator in variants:
            deps, real[estimator] = score_responses(model, sampled, blind[masking], estimator, args.temperature,
                                                    real.get(estimator))
            scores[variant_name((masking, estimator))].extend(deps)
        first = len(benches)
        for sample, n_tokens in enumerate(int(n) for n in sampled.mask.sum(dim=1)):
            benches.append([bench] * n_tokens)
            means = {name: (float(np.mean(deps[first + sample])) if n_tokens else None) for name, deps in scores.items()}
            trajectories.append({"benchmark": bench, "row_id": row.row_id, "sample": sample, "n_tokens": n_tokens,
                                 "mean_dependency": means})
    return scores, benches, trajectories


def analyze_variants(args) -> dict:
    import torch

    from vppo.catalog import get_method
    from vppo.reporting.analysis import _masking_params, load_inputs, provenance

    start = time.time()
    variants = parse_variants(args.variants)
    inputs = load_inputs(args)
    model, processor, rows = inputs.model, inputs.processor, inputs.rows
    torch.manual_seed(args.seed)  # as vppo analyze: the same seed samples the same responses
    keep_ratio = get_method("vppo").keep_ratio
    scores, benches, trajectories = score_variants(model, processor, rows, variants, args)
    reference = scores[variant_name(REFERENCE_VARIANT)]
    results = {}
    for masking, estimator in variants:
        name = variant_name((masking, estimator))
        results[name] = {"masking": {"strategy": masking, "params": _masking_params(processor, masking)},
                         "estimator": estimator, **describe_variant(scores[name], benches),
                         "vs_reference": compare_to_reference(reference, scores[name], keep_ratio)}
    return {"schema": VARIANTS_SCHEMA_ID, **provenance(args, inputs, start), "reference": variant_name(REFERENCE_VARIANT),
            "keep_ratio": keep_ratio, "variants": results, "trajectories": trajectories}
