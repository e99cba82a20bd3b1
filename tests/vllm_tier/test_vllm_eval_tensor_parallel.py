"""``vppo eval --backend vllm --tensor-parallel-size 2``: the 32B evaluation's engine shape (one engine over two
workers, gloo + vLLM's shared-memory all-reduce on CPU) on the tiny model, as its own process (vLLM starts the
second worker). The result records the engine's tensor-parallel size and scores every question of each benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vppo.data.eval_data import prepare_eval_data
from vppo.evaluation.results import read_result, read_samples

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ("geo3k", "mmmu_pro")


def test_evaluation_with_tensor_parallel_two(vllm_model_dir, tmp_path):
    data = prepare_eval_data("fixtures", tmp_path / "data", n_rows=2)
    out = tmp_path / "tiny" / "base"
    done = subprocess.run(
        [sys.executable, "-m", "vppo", "eval", str(vllm_model_dir), "--data", str(data), "--benchmarks",
         ",".join(BENCHMARKS), "--out", str(out), "--backend", "vllm", "--tensor-parallel-size", "2",
         "--max-new-tokens", "12", "--model-label", "tiny", "--method-label", "base"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    for key in BENCHMARKS:
        result = read_result(out / f"{key}.json")
        assert result["backend"] == "vllm" and result["tensor_parallel_size"] == 2
        samples = read_samples(out / result["samples_file"])
        assert len(samples) == result["n_questions"] > 0
        assert all(len(s["responses"]) == 8 and all(s["responses"]) for s in samples)
