"""End to end through lmms-eval's own evaluator: ``vppo eval`` on the tiny model over every fixture benchmark
(one shared run), a scripted model whose avg@8 is known by hand, resuming, and the data checksum guard."""

from __future__ import annotations

import json
import math
import time

import pytest

from vppo.catalog import PAPER_BENCHMARKS as BENCHMARKS, resolve_benchmarks  # the eight: the default "paper"
from vppo.cli import main
from vppo.data.eval_data import EvalDataError, prepare_eval_data
from vppo.evaluation.results import read_result, read_samples
from vppo.data.eval_data import data_checksum
from vppo.evaluation.runner import EvalRequest, run_eval
from doubles.scripted_lmms import BACKEND, n_correct, register_scripted

pytestmark = pytest.mark.slow
N_ROWS = 3  # + one planted row with an empty answer: scored, always wrong


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return prepare_eval_data("fixtures", tmp_path_factory.mktemp("eval-data"), n_rows=N_ROWS, plant_empty_answers=1)


@pytest.fixture(scope="module")
def tiny_eval(tiny_model_dir, eval_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out") / "tiny" / "base"
    started = time.perf_counter()
    rc = main(["eval", str(tiny_model_dir), "--data", str(eval_data), "--benchmarks", "paper", "--out", str(out),
               "--max-new-tokens", "8", "--model-label", "tiny", "--method-label", "base"])
    assert rc == 0
    return out, time.perf_counter() - started


def test_tiny_run_writes_eight_results_with_eight_samples_per_question(tiny_eval, tiny_model_dir, eval_data):
    out, _ = tiny_eval
    for bench in BENCHMARKS:
        result = read_result(out / f"{bench.key}.json")  # validates the vppo.eval/1 schema
        assert (result["benchmark"], result["task"], result["model"], result["method"]) == \
               (bench.key, bench.task, "tiny", "base")
        assert result["k"] == 8 and result["metric"] == "avg@8" and result["backend"] == "hf"
        assert result["n_questions"] == N_ROWS + 1 and result["n_samples"] == 8 * (N_ROWS + 1)
        assert result["bad_rows"] == 1 and [d["row_id"] for d in result["bad_row_details"]] == [str(N_ROWS)]
        assert result["image_bounds"] == {"resize": {"min_pixels": 1024, "max_pixels": 589824},
                                          "processor": {"min_pixels": 3136, "max_pixels": 12845056}}
        assert result["sampling"] == {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 8,
                                      "repetition_penalty": 1.0, "n": 8}
        assert result["data"]["sha256"] == json.loads((eval_data / "manifest.json").read_text())[
            "benchmarks"][bench.key]["sha256"]
        samples = read_samples(out / result["samples_file"])
        assert [s["row_id"] for s in samples] == [str(i) for i in range(N_ROWS + 1)]
        assert samples[-1]["answer"] == "" and samples[-1]["correct"] == [0] * 8
        assert all(len(s["responses"]) == len(s["extracted"]) == len(s["correct"]) == 8 for s in samples)
        total = sum(sum(s["correct"]) for s in samples)
        assert result["accuracy"] == pytest.approx(100 * total / (8 * (N_ROWS + 1)))
        assert result["lmms_eval"]["metric"] == pytest.approx(result["accuracy"])


def test_rerun_reuses_matching_results(tiny_eval, tiny_model_dir, eval_data, capsys):
    out, first_wall = tiny_eval
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    started = time.perf_counter()
    assert main(["eval", str(tiny_model_dir), "--data", str(eval_data), "--benchmarks", "geo3k,mmk12", "--out",
                 str(out), "--max-new-tokens", "8", "--model-label", "tiny", "--method-label", "base"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before
    assert time.perf_counter() - started < first_wall


def test_check_on_a_checkpoint_reuses_its_results_and_flags_the_drop(tiny_eval, tiny_model_dir, eval_data, capsys):
    out, _ = tiny_eval
    rc = main(["check", str(tiny_model_dir), "--against", "paper:qwen2.5-vl-7b/base", "--data", str(eval_data),
               "--eval-out", str(out), "--max-new-tokens", "8", "--model-label", "tiny", "--method-label", "base",
               "--allow-protocol-mismatch"])  # 8 tokens on 4 fixture rows is not the paper's protocol: listed
    text = capsys.readouterr().out
    assert rc == 1 and "reusing" in text and "| geo3k | 4 | 0.00" in text and "REGRESSION" in text
    assert "PROTOCOL MISMATCH (--allow-protocol-mismatch): max new tokens 8 vs 2048" in text


def test_avg_at_8_through_lmms_eval_equals_the_hand_count(monkeypatch, tiny_model_dir, eval_data, tmp_path):
    """Rows 0, 1, 2 get 3, 8 and 4 right answers out of 8, row 3 (no answer) none -> 15 / 32 = 46.875 %. The
    right answers are boxed inside <think>: lmms-eval's reasoning-tag stripping would have made them wrong."""
    register_scripted(monkeypatch)
    assert [n_correct(r) for r in range(N_ROWS + 1)] == [3, 8, 4, 0]
    req = EvalRequest(checkpoint=tiny_model_dir, data=eval_data, benchmarks=resolve_benchmarks("geo3k,mmmu_pro"),
                      out=tmp_path, backend=BACKEND)
    results = run_eval(req)
    per_question = [37.5, 100.0, 50.0, 0.0]
    mean = sum(per_question) / 4
    hand_stderr = math.sqrt(sum((x - mean) ** 2 for x in per_question) / 3 / 4)
    for key in ("geo3k", "mmmu_pro"):
        assert results[key]["accuracy"] == pytest.approx(46.875)
        assert results[key]["stderr"] == pytest.approx(hand_stderr)
        assert results[key]["lmms_eval"]["stderr_clt"] == pytest.approx(hand_stderr)
        samples = read_samples(tmp_path / f"{key}.samples.jsonl")
        assert [sum(s["correct"]) for s in samples] == [3, 8, 4, 0]
        assert samples[0]["responses"][0].startswith("<think>")
    # A different seed is a different request: evaluated again, not reused.
    req.seed = 1
    created = read_result(tmp_path / "geo3k.json")["created"]
    time.sleep(1.1)
    run_eval(req)
    assert read_result(tmp_path / "geo3k.json")["seed"] == 1
    assert read_result(tmp_path / "geo3k.json")["created"] != created


def test_changed_data_fails_loudly(tmp_path):
    root = prepare_eval_data("fixtures", tmp_path / "data", n_rows=2, benchmarks="geo3k")
    data_checksum(root, "geo3k")
    rows = json.loads((root / "geo3k.json").read_text())
    (root / "geo3k.json").write_text(json.dumps(rows[:1]))
    with pytest.raises(EvalDataError, match="changed since it was prepared"):
        data_checksum(root, "geo3k")


def test_a_seven_image_question_is_evaluated_with_each_image_in_place(tiny_model_dir, tmp_path):
    """MMMU-Pro has questions with up to 7 images (the official engine allows 10 per prompt): the fixture row
    the vLLM tier evaluates goes through the transformers backend too, every image where its placeholder is."""
    from vppo.data.eval_fixtures import MULTI_IMAGE_COUNT
    from vppo.evaluation import tasklib

    data = prepare_eval_data("fixtures", tmp_path / "data", n_rows=1, benchmarks="mmmu_pro",
                             multi_image_row=MULTI_IMAGE_COUNT)
    row = tasklib.scan(data, "mmmu_pro").rows[1]
    doc = {"prompt": row.prompt, "image_paths": row.images}
    parts = tasklib.doc_to_messages(doc)[0]["content"]
    assert [p["type"] for p in parts][:4] == ["text", "image", "text", "image"]
    assert sum(p["type"] == "image" for p in parts) == MULTI_IMAGE_COUNT
    out = tmp_path / "out" / "tiny" / "base"
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--benchmarks", "mmmu_pro", "--out", str(out),
                 "--max-new-tokens", "4", "--model-label", "tiny", "--method-label", "base"]) == 0
    result = read_result(out / "mmmu_pro.json")
    assert result["n_questions"] == 2 and result["bad_rows"] == 0
    assert [s["answer"] for s in read_samples(out / result["samples_file"])][1] == str(MULTI_IMAGE_COUNT)
