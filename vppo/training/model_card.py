"""The Hub model card (``README.md``) next to a converted checkpoint: how it was made and, once evaluated, its scores.

``vppo convert`` writes it (:func:`write_card`) from the facts of the training run it converts
(:func:`training_facts`: method, recipe, seed, steps, data checksum, harness commits, versions), which it also keeps
in ``vppo_convert.json`` under ``card``; ``vppo card`` (:mod:`vppo.reporting.card`) renders it again with the
avg@k table of every result file evaluated on this checkpoint (matched by its weights' sha256).

The YAML metadata is the Hub's: ``base_model`` (only when the base is a Hub id: a local path is not a valid
value), ``library_name``, ``pipeline_tag``, ``tags``, ``datasets`` (a Hub id of the training data, when it
came from the Hub) and, once evaluated, ``model-index`` (one accuracy per benchmark).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CARD_FILE = "README.md"
PIPELINE_TAG = "image-text-to-text"
LIBRARY = "transformers"


def _hub_id(text: str | None) -> str | None:
    """``text`` when it reads as a Hub repo id (``org/name``, not an existing local path), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not text or Path(text).exists() or text.count("/") != 1:
        return None
    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


def training_facts(source: Path, base_id: str | None = None, family: str | None = None) -> dict:
    """What the card says of how the weights were made: the ``train_summary.json`` beside ``source`` (a
    ``vppo train`` OUT_DIR's ``final/``), when there is one, the harness commit of this conversion and the
    model family key (``vppo.model_families``) of the converted weights."""
    from vppo import __version__, harness_commit

    source = Path(source)
    summary_path = next((p for p in (source / "train_summary.json", source.parent / "train_summary.json")
                         if p.is_file()), None)
    summary = json.loads(summary_path.read_text()) if summary_path else {}
    data = summary.get("data") or {}
    manifest = Path(data["path"]) / "manifest.json" if data.get("path") else None
    data_source = json.loads(manifest.read_text()).get("source") if manifest and manifest.is_file() else None
    return {
        "base_model": _hub_id(base_id), "base": base_id, "family": family, "method": summary.get("method"),
        "recipe": (summary.get("recipe") or {}).get("name"), "seed": summary.get("seed"),
        "steps": summary.get("steps"), "data_sha256": data.get("sha256"), "data_rows": data.get("rows_used"),
        "dataset": _hub_id(data_source), "run_name": (summary.get("tracking") or {}).get("run_name"),
        "versions": summary.get("versions"), "train_summary": str(summary_path) if summary_path else None,
        "trained_at_commit": summary.get("harness_commit"), "converted_at_commit": harness_commit(),
        "vppo": __version__,
    }


def _avg(results: list[dict]) -> tuple[float, float] | None:
    """Mean of the paper's eight benchmarks and its standard error (independent benchmarks), when all eight are in."""
    from vppo.catalog import PAPER_AVG

    by_key = {r["benchmark"]: r for r in results}
    if not all(key in by_key for key in PAPER_AVG):
        return None
    mean = sum(by_key[k]["accuracy"] for k in PAPER_AVG) / len(PAPER_AVG)
    return mean, math.sqrt(sum(by_key[k]["stderr"] ** 2 for k in PAPER_AVG)) / len(PAPER_AVG)


def results_table(results: list[dict]) -> str:
    """Markdown avg@k table: one row per benchmark (accuracy ± standard error, %), then the paper's Avg."""
    from vppo.catalog import BENCHMARK_BY_KEY, BENCHMARK_KEYS

    lines = ["| benchmark | avg@k (%) | ± s.e. | k | questions | backend | seed |", "|---|---|---|---|---|---|---|"]
    order = {key: i for i, key in enumerate(BENCHMARK_KEYS)}  # the paper's column order, then any other
    for r in sorted(results, key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"])):
        name = BENCHMARK_BY_KEY[r["benchmark"]].paper_name if r["benchmark"] in BENCHMARK_BY_KEY else r["benchmark"]
        lines.append(f"| {name} | {r['accuracy']:.1f} | {r['stderr']:.1f} | {r['k']} | {r['n_questions']} | "
                     f"{r['backend']} | {r['seed']} |")
    avg = _avg(results)
    if avg:
        lines.append(f"| **Avg** (paper's eight) | {avg[0]:.1f} | {avg[1]:.1f} | | | | |")
    return "\n".join(lines)


def render_card(facts: dict, results: list[dict] | None = None, name: str = "vppo checkpoint") -> str:
    """The card's text (Hub YAML metadata + Markdown)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from vppo.model_families import FAMILIES

    method = facts.get("method") or "unknown method"
    family = FAMILIES.get(facts.get("family") or "")  # None: weights of an architecture the harness does not know
    eval_results = [EvalResult(task_type=PIPELINE_TAG, dataset_type=r["benchmark"], dataset_name=r["benchmark"],
                               metric_type="accuracy", metric_name=f"avg@{r['k']}",
                               metric_value=round(r["accuracy"], 2))
                    for r in results or []]
    data = ModelCardData(
        base_model=facts.get("base_model"), library_name=LIBRARY, pipeline_tag=PIPELINE_TAG,
        tags=[t for t in ("vppo", "reinforcement-learning", family and family.key, method)
              if t and t != "unknown method"],
        datasets=[facts["dataset"]] if facts.get("dataset") else None, model_name=name,
        eval_results=eval_results or None)
    made = "\n".join(f"- **{label}:** {value}" for label, value in (
        ("method", f"`{method}`"), ("recipe", f"`{facts.get('recipe')}`"), ("seed", facts.get("seed")),
        ("optimizer steps", facts.get("steps")), ("base model", f"`{facts.get('base')}`"),
        ("model family", family.label if family else "not recorded"),
        ("training data", f"{facts.get('data_rows')} rows, sha256 `{facts.get('data_sha256')}`"),
        ("tracking run", f"`{facts.get('run_name')}`"),
        ("harness", f"vppo {facts.get('vppo')}; trained at commit `{facts.get('trained_at_commit')}`, converted at "
                    f"commit `{facts.get('converted_at_commit')}`"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted((facts.get("versions") or {}).items()) if v))))
    scores = (results_table(results) + "\n\nEach accuracy is the mean over k sampled answers per question (avg@k), "
              "with its standard error over questions; `vppo eval` wrote one result file per benchmark."
              if results else "Not evaluated yet: `vppo card` adds the avg@k table once `vppo eval` has scored it.")
    body = (f"\n# {name}\n\nA policy trained by the vppo-repro harness (a reproduction of VPPO, \"Spotlight on Token "
            f"Perception for Multimodal Reinforcement Learning\") with method `{method}`.\n\n## How it was made\n\n"
            f"{made}\n\n## Evaluation\n\n{scores}\n")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def write_card(checkpoint: Path, facts: dict, results: list[dict] | None = None, name: str | None = None) -> Path:
    from vppo.fileio import write_text_atomic

    path = Path(checkpoint) / CARD_FILE
    write_text_atomic(path, render_card(facts, results, name or facts.get("run_name") or Path(checkpoint).name))
    return path
