"""``vppo eval --backend vllm`` on vLLM's CPU build: the same result files as the transformers backend (same
benchmarks, questions, bad rows, sampling record and per-sample layout), only the backend and the sampled
responses differ. Every benchmark has a row with 7 images (MMMU-Pro's most): the engine takes it (the
protocol's limit is 10 images per prompt; at vLLM's default or a limit of 4 every such row raised)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vppo.catalog import PAPER_BENCHMARKS as BENCHMARKS  # the eight: what "paper" (the default) names
from vppo.cli import main
from vppo.data.eval_data import prepare_eval_data
from vppo.data.eval_fixtures import MULTI_IMAGE_COUNT
from vppo.evaluation.results import read_result, read_samples

N_ROWS = 2
N_QUESTIONS = N_ROWS + 2  # + the planted empty answer (row N_ROWS) and the multi-image row (row N_ROWS + 1)
#: What may differ between two backends' results for the same checkpoint, data and seed.
PER_RUN_FIELDS = {"backend", "model_load_s", "accuracy", "stderr", "wall_time_s", "created", "lmms_eval", "versions", "package_versions",
                  "engine_environment"}


@pytest.fixture(scope="module")
def both_backends(vllm_model_dir, tmp_path_factory):
    data = prepare_eval_data("fixtures", tmp_path_factory.mktemp("eval-data"), n_rows=N_ROWS, plant_empty_answers=1,
                             multi_image_row=MULTI_IMAGE_COUNT)
    outs = {}
    for backend in ("vllm", "hf"):
        out = tmp_path_factory.mktemp(f"eval-{backend}") / "tiny" / "base"
        rc = main(["eval", str(vllm_model_dir), "--data", str(data), "--benchmarks", "paper", "--out", str(out),
                   "--backend", backend, "--max-new-tokens", "12", "--model-label", "tiny", "--method-label", "base"])
        assert rc == 0
        outs[backend] = out
    return outs


def test_vllm_backend_writes_the_same_result_files_as_hf(both_backends):
    vllm_out, hf_out = both_backends["vllm"], both_backends["hf"]
    assert sorted(p.name for p in vllm_out.iterdir()) == sorted(p.name for p in hf_out.iterdir())
    for bench in BENCHMARKS:
        v, h = read_result(vllm_out / f"{bench.key}.json"), read_result(hf_out / f"{bench.key}.json")
        assert (v["backend"], h["backend"]) == ("vllm", "hf")
        assert set(v) == set(h)
        assert {k: x for k, x in v.items() if k not in PER_RUN_FIELDS} == \
               {k: x for k, x in h.items() if k not in PER_RUN_FIELDS}
        assert v["n_questions"] == N_QUESTIONS and v["n_samples"] == 8 * N_QUESTIONS and v["bad_rows"] == 1  # scored as wrong
        assert v["lmms_eval"]["metric"] == pytest.approx(v["accuracy"])
        vs, hs = read_samples(vllm_out / v["samples_file"]), read_samples(hf_out / h["samples_file"])
        assert [s["row_id"] for s in vs] == [s["row_id"] for s in hs]
        assert all(set(a) == set(b) for a, b in zip(vs, hs))
        assert all(len(s["responses"]) == len(s["correct"]) == 8 for s in vs)
        multi = [s for s in vs if s["row_id"] == str(N_ROWS + 1)]
        assert len(multi) == 1 and multi[0]["answer"] == str(MULTI_IMAGE_COUNT)  # evaluated, not a bad row


def test_vllm_samples_are_the_warm_models_answers(both_backends):
    """vLLM really sampled from the checkpoint: the warm-started model answers in its trained format."""
    samples = [s for bench in BENCHMARKS
               for s in read_samples(both_backends["vllm"] / f"{bench.key}.samples.jsonl")]
    responses = [r for s in samples for r in s["responses"]]
    assert len(set(responses)) > 1  # k samples, not one answer copied
    assert sum("\\boxed{" in r for r in responses) > len(responses) // 2


def test_vllm_eval_on_cpu_survives_a_batch_over_the_token_budget(vllm_model_dir, tmp_path):
    """8 questions x 8 seeded samples, prompts of 60-900 tokens: one engine call asks for more than the CPU step
    budget (4096 tokens). With vLLM's default chunked prefill a prompt was split at the budget and the engine
    stopped with "CPU Generator does not use offset" (it rewinds a seeded request's generator, CUDA only): the
    adapter turns chunked prefill off on CPU (``platform_engine_kwargs``).

    Run as a user runs it, without this tier's vLLM environment: vLLM's CPU build then reserved 0.9 of the host's
    memory for its KV cache and refused to start wherever less than that was free ("Available memory ... is less
    than desired CPU memory utilization"); the adapter now sets a 1 GiB cache unless told (``CPU_ENGINE_ENV``)."""
    data = prepare_eval_data("fixtures", tmp_path / "data", n_rows=8, benchmarks="mathverse")
    out = tmp_path / "eval" / "tiny" / "base"
    # In its own process: a second in-process engine in this module started while the garbage collector shut the
    # first one down, which resets vLLM's process-wide groups ("pipeline model parallel group is not initialized").
    done = subprocess.run([sys.executable, "-m", "vppo", "eval", str(vllm_model_dir), "--data", str(data),
                           "--benchmarks", "mathverse", "--out", str(out), "--backend", "vllm", "--max-new-tokens", "4",
                           "--model-label", "tiny", "--method-label", "base"], capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items()
                                            if k not in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")})
    assert done.returncode == 0, done.stderr[-4000:]
    result = read_result(out / "mathverse.json")
    assert result["engine_environment"] == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert (result["backend"], result["n_questions"], result["n_samples"]) == ("vllm", 8, 64)
    assert all(len(s["responses"]) == 8 for s in read_samples(out / result["samples_file"]))
