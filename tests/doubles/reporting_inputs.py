"""Synthetic inputs of the reporting stage that follow the stage contracts exactly (a test double).

They let the tables, figures and report be built and checked without training or evaluating anything:
:func:`eval_result` is a ``vppo.eval/1`` result file, :func:`training_log_records` a ``training_log.jsonl``
body, :func:`analysis_result` a ``vppo.analysis/1`` file. Numbers are made up; nothing here is published.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vppo.eval_images import protocol_image_bounds
from vppo.evaluation.results import SCHEMA
from vppo.fileio import write_json_atomic, write_jsonl_atomic
from vppo.reporting.analysis import ANALYSIS_SCHEMA_ID
from vppo.reporting.results_io import analysis_file, eval_file, training_log_file


def eval_result(model: str, method: str, benchmark: str, accuracy: float, stderr: float, **overrides) -> dict:
    data = {
        "schema": SCHEMA, "model": model, "method": method, "benchmark": benchmark,
        "task": f"vppo_{benchmark}", "metric": "avg@8", "k": 8, "accuracy": accuracy, "stderr": stderr,
        "n_questions": 5, "n_samples": 40, "bad_rows": 0, "bad_row_details": [], "backend": "hf",
        "versions": {"vppo": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "lmms_eval": "0.7.3",
                     "vllm": None, "python": "3.11.7"},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 2048,
                     "repetition_penalty": 1.0, "n": 8},
        "seed": 0, "limit": None, "checkpoint": f"results/checkpoints/{model}/{method}",
        "checkpoint_sha256": hashlib.sha256(f"{model}/{method}".encode()).hexdigest(),
        "data": {"path": "data/eval", "sha256": f"{benchmark}-sha"}, "wall_time_s": 12.5,
        "samples_file": f"{benchmark}.samples.jsonl", "created": "2026-01-01T00:00:00Z",
        "image_bounds": protocol_image_bounds(),
    }
    data.update(overrides)
    return data


def write_eval_result(eval_root: str | Path, model: str, method: str, benchmark: str, accuracy: float,
                      stderr: float, **overrides) -> Path:
    path = eval_file(eval_root, model, method, benchmark)
    write_json_atomic(path, eval_result(model, method, benchmark, accuracy, stderr, **overrides))
    return path


def training_log_records(method: str, steps: int = 10, seed: int = 0) -> list[dict]:
    """Plausible curves; alpha is null for methods without TAS, kept fraction 1.0 without TGF (contract)."""
    rng = np.random.default_rng(seed)
    tas, tgf = method.startswith("vppo") and "tgf_only" not in method, method.startswith("vppo") and "tas_only" not in method
    records, slope = [], rng.uniform(0.02, 0.06)
    for step in range(1, steps + 1):
        acc = float(min(1.0, 0.2 + slope * step + rng.normal(0, 0.02)))
        alpha = [float(1.0 + rng.normal(0, 0.01)), 0.9, float(1.2 + 0.1 * rng.random())] if tas else [None] * 3
        records.append({
            "step": step, "reward": acc, "accuracy": acc, "format": 1.0,
            "kept_token_fraction": 0.41 if tgf else 1.0, "dependency_kept_mean": 0.3 if tgf else None,
            "dependency_dropped_mean": 0.01 if tgf else None,
            "alpha_mean": alpha[0], "alpha_min": alpha[1], "alpha_max": alpha[2], "filtered_groups": 1,
            "time_generation_s": 1.0, "time_old_logp_s": 0.1, "time_masked_pass_s": 0.1 if method != "grpo" else None,
            "time_update_s": 0.5, "tokens_per_s": 100.0, "loss": float(rng.normal(0, 0.1)),
        })
    return records


def write_training_log(train_root: str | Path, model: str, method: str, steps: int = 10) -> Path:
    path = training_log_file(train_root, model, method)
    seed = int(hashlib.sha256(method.encode()).hexdigest()[:8], 16)
    write_jsonl_atomic(path, training_log_records(method, steps, seed))
    return path


def analysis_result(model: str, method: str, seed: int = 0, n_trajectories: int = 16) -> dict:
    """A heavy-tailed token dependency sample summarised the way ``vppo analyze`` does."""
    from vppo.reporting.analysis import summarize

    rng = np.random.default_rng(seed)
    per_trajectory = [rng.exponential(rng.uniform(0.02, 0.3), size=int(rng.integers(8, 40))) for _ in range(n_trajectories)]
    summary = summarize([t.tolist() for t in per_trajectory])
    return {"schema": ANALYSIS_SCHEMA_ID, "model": model, "method": method, "estimator": "k3", **summary}


def write_analysis(analysis_root: str | Path, model: str, method: str, seed: int = 0) -> Path:
    path = analysis_file(analysis_root, model, method)
    write_json_atomic(path, analysis_result(model, method, seed))
    return path
