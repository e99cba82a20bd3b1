"""``vppo check``: a planted regression exits 1 with the table, an equal candidate does not, --max-drop gates
significant drops, paper references resolve from results/reference, bad input exits 2."""

from __future__ import annotations

import json

import pytest

from vppo.catalog import PAPER_AVG as BENCHMARK_KEYS
from vppo.cli import main
from vppo.evaluation.check import Score, compare, paper_reference, default_reference_dir
from vppo.eval_images import protocol_image_bounds
from vppo.evaluation.results import SCHEMA, validate_result

PAPER_VPPO_7B = dict(zip(BENCHMARK_KEYS, [71.6, 68.1, 82.8, 46.5, 33.3, 71.5, 47.9, 37.9]))


def write_results(root, accuracies: dict[str, float], stderr: float = 1.0, **overrides):
    root.mkdir(parents=True, exist_ok=True)
    for key, acc in accuracies.items():
        result = {
            "schema": SCHEMA, "model": "qwen2.5-vl-7b", "method": "vppo", "benchmark": key, "task": f"vppo_{key}",
            "metric": "avg@8", "k": 8, "accuracy": acc, "stderr": stderr, "n_questions": 1000, "n_samples": 8000,
            "bad_rows": 0, "bad_row_details": [], "backend": "vllm",
            "versions": {"vppo": "0.1.0", "torch": "2.8", "transformers": "5.24", "lmms_eval": "0.7.3",
                         "vllm": "0.11", "python": "3.11"},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 2048,
                         "repetition_penalty": 1.0, "n": 8},
            "seed": 0, "limit": None, "checkpoint": "/ckpt", "checkpoint_sha256": "ab" * 32,
            "data": {"path": "/data", "sha256": "cd" * 32}, "wall_time_s": 1.0,
            "samples_file": f"{key}.samples.jsonl", "created": "2026-01-01T00:00:00Z",
            "image_bounds": protocol_image_bounds(), **overrides}
        (root / f"{key}.json").write_text(json.dumps(validate_result(result), indent=2, sort_keys=True))
        write_samples(root / result["samples_file"], round(acc * 80), questions=1000, k=8)
    return root


def write_samples(path, n_correct: int, questions: int, k: int) -> None:
    """A samples file whose avg@k is n_correct / (questions * k): the first n_correct samples are right."""
    flags = [1] * n_correct + [0] * (questions * k - n_correct)
    path.write_text("".join(json.dumps({"row_id": str(q), "correct": flags[q * k:(q + 1) * k]}) + "\n"
                            for q in range(questions)))


def test_planted_regression_exits_1_and_prints_the_table(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B)
    cand = write_results(tmp_path / "cand", {**PAPER_VPPO_7B, "geo3k": 30.0})
    report = tmp_path / "report.md"
    assert main(["check", str(cand), "--against", str(ref), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "| geo3k | 30.00 ± 1.00 | 46.50 ± 1.00 | -16.50 | -11.67 | REGRESSION |" in out
    assert "| mathverse | 71.60 ± 1.00 | 71.60 ± 1.00 | +0.00 | +0.00 | no significant change |" in out
    assert "REGRESSION on geo3k" in out and report.read_text() in out


def test_equal_candidate_is_no_false_alarm(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B)
    # +-1 point per benchmark (z = -+0.71), mean change 0: noise, not a regression. (A uniform -1 everywhere
    # would be: the avg row's z is -2.)
    cand = write_results(tmp_path / "cand", {k: v + (-1.0) ** i for i, (k, v) in enumerate(PAPER_VPPO_7B.items())})
    assert main(["check", str(ref), "--against", str(ref)]) == 0
    assert main(["check", str(cand), "--against", str(ref)]) == 0
    assert "REGRESSION" not in capsys.readouterr().out


def test_max_drop_gates_significant_drops(tmp_path):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, stderr=0.2)
    cand = write_results(tmp_path / "cand", {**PAPER_VPPO_7B, "mmk12": 80.8}, stderr=0.2)  # -2 points, z = -7
    assert main(["check", str(cand), "--against", str(ref)]) == 1
    assert main(["check", str(cand), "--against", str(ref), "--max-drop", "3"]) == 0
    assert main(["check", str(cand), "--against", str(ref), "--max-drop", "1.5"]) == 1


def test_paper_reference_has_no_stderr_and_an_average(tmp_path, capsys):
    scores = paper_reference("paper:qwen2.5-vl-7b/vppo", default_reference_dir())
    assert {k: s.accuracy for k, s in scores.items() if k != "avg"} == PAPER_VPPO_7B
    assert scores["avg"] == Score(57.5, None)
    assert paper_reference("paper:qwen2.5-vl-7b/vppo_tas_only", default_reference_dir()) == {"avg": Score(55.8, None)}
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B, stderr=0.8)
    assert main(["check", str(cand), "--against", "paper:qwen2.5-vl-7b/vppo"]) == 0
    assert "| avg | 57.45 ± 0.28 | 57.50 | -0.05 |" in capsys.readouterr().out  # mean of the 8 vs the paper's Avg
    assert main(["check", str(cand), "--against", "paper:qwen2.5-vl-32b/vppo"]) == 1  # 32B Avg only: 64.6


def test_z_and_verdicts():
    rows = compare({"a": Score(50, 1.0), "b": Score(50, 0.0)}, {"a": Score(54, 1.0), "b": Score(50, None)},
                   ["a", "b"], alpha=0.05, max_drop=None)
    assert rows[0].z == pytest.approx(-4 / 2 ** 0.5) and rows[0].verdict == "REGRESSION"
    assert rows[1].z == 0 and rows[1].verdict == "no significant change"


def test_bad_input_exits_2(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B)
    partial = write_results(tmp_path / "partial", {"geo3k": 40.0})
    assert main(["check", str(partial), "--against", str(ref)]) == 2
    assert "mathverse.json: missing" in capsys.readouterr().out
    assert main(["check", str(ref), "--against", "paper:qwen2.5-vl-7b/unknown"]) == 2
    (tmp_path / "ref" / "geo3k.json").write_text("{}")
    assert main(["check", str(partial), "--against", str(ref), "--benchmarks", "geo3k"]) == 2
    assert "field 'accuracy': missing" in capsys.readouterr().out


def test_a_result_whose_samples_disagree_is_refused(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B)
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B)
    stated = json.loads((cand / "geo3k.json").read_text())
    (cand / "geo3k.json").write_text(json.dumps({**stated, "accuracy": 60.0}))  # edited by hand: samples say 46.5
    assert main(["check", str(cand), "--against", str(ref)]) == 2
    printed = capsys.readouterr()
    assert "geo3k.json: disagrees with geo3k.samples.jsonl: accuracy 60.0 but the samples give 46.5" in (
        printed.out + printed.err)
    (cand / "geo3k.json").write_text(json.dumps(stated))
    (cand / "geo3k.samples.jsonl").write_text("\n".join((cand / "geo3k.samples.jsonl").read_text().splitlines()[:-5]))
    assert main(["check", str(cand), "--against", str(ref)]) == 2
    assert "n_questions 1000 but the samples give 995" in "".join(capsys.readouterr())


@pytest.mark.parametrize("damage", ["truncated result", "binary result", "missing samples"])
def test_damaged_result_files_are_bad_input(tmp_path, capsys, damage):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B)
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B)
    target = cand / "mmk12.json"
    if damage == "truncated result":
        target.write_text(target.read_text()[:100])
    elif damage == "binary result":
        target.write_bytes(b"\xff\xfe\x00garbage")
    else:
        (cand / "mmk12.samples.jsonl").unlink()
    assert main(["check", str(cand), "--against", str(ref)]) == 2
    printed = capsys.readouterr()
    assert "vppo check: " in printed.out + printed.err and "mmk12" in printed.out + printed.err


def test_a_corrupted_checkpoint_candidate_is_bad_input(tmp_path, capsys, tiny_model_dir):
    import shutil

    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc = main(["check", str(broken), "--against", "paper:qwen2.5-vl-7b/vppo", "--eval-out", str(tmp_path / "e"),
               "--data", str(tmp_path / "no-data")])
    printed = capsys.readouterr()
    assert rc == 2 and "unreadable weights" in printed.out + printed.err
