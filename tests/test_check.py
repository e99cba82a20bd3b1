"""``vppo check``: like for like (a checkpoint is evaluated with the reference's protocol; a protocol or question-set
difference is refused or, when allowed, listed), paired per-question statistics with Holm over the table, the
paper reference with the candidate's standard error and a stated tolerance, bad input on stderr with exit 2."""

from __future__ import annotations

import json

import pytest

from vppo.catalog import BENCHMARK_BY_KEY, PAPER_AVG as BENCHMARK_KEYS
from vppo.cli import main
from vppo.evaluation.check import Score, paper_reference, default_reference_dir
from vppo.eval_images import protocol_image_bounds
from vppo.evaluation.protocol import avg_at_k_stderr
from vppo.evaluation.results import SCHEMA, validate_result

PAPER_VPPO_7B = dict(zip(BENCHMARK_KEYS, [71.6, 68.1, 82.8, 46.5, 33.3, 71.5, 47.9, 37.9]))


def write_results(root, accuracies: dict[str, float], questions: int | None = None, k: int = 8, even: bool = False,
                  **overrides):
    """A results folder whose samples give each accuracy (to one sample): the first samples in row order are
    right (two such folders differ on few questions), or with ``even`` spread over the questions as evenly as
    they go. ``questions``: default the real set's row count (what the paper's protocol has)."""
    root.mkdir(parents=True, exist_ok=True)
    for key, acc in accuracies.items():
        n = questions or BENCHMARK_BY_KEY[key].expected_rows
        right = round(acc * n * k / 100)
        if even:
            correct = [[1] * (right // n + (q < right % n)) + [0] * (k - right // n - (q < right % n)) for q in range(n)]
        else:
            flags = [1] * right + [0] * (n * k - right)
            correct = [flags[q * k:(q + 1) * k] for q in range(n)]
        flags = [f for c in correct for f in c]
        result = {
            "schema": SCHEMA, "model": "qwen2.5-vl-7b", "method": "vppo", "benchmark": key, "task": f"vppo_{key}",
            "metric": f"avg@{k}", "k": k, "accuracy": 100 * sum(flags) / len(flags),
            "stderr": 100 * avg_at_k_stderr(correct), "n_questions": n, "n_samples": n * k,
            "bad_rows": 0, "bad_row_details": [], "backend": "vllm",
            "versions": {"vppo": "0.1.0", "torch": "2.8", "transformers": "5.24", "lmms_eval": "0.7.3",
                         "vllm": "0.11", "python": "3.11"},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 2048,
                         "repetition_penalty": 1.0, "n": k},
            "seed": 0, "limit": None, "checkpoint": "/ckpt", "checkpoint_sha256": "ab" * 32,
            "data": {"path": "/data", "sha256": "cd" * 32}, "wall_time_s": 1.0,
            "samples_file": f"{key}.samples.jsonl", "created": "2026-01-01T00:00:00Z",
            "image_bounds": protocol_image_bounds(), **overrides}
        (root / f"{key}.json").write_text(json.dumps(validate_result(result), indent=2, sort_keys=True))
        (root / result["samples_file"]).write_text("".join(
            json.dumps({"row_id": str(q), "correct": c}) + "\n" for q, c in enumerate(correct)))
    return root


def row(text: str, benchmark: str) -> list[str]:
    """The cells of ``benchmark``'s row of a check table."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {benchmark} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_planted_regression_exits_1_and_prints_the_table(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, questions=100)
    cand = write_results(tmp_path / "cand", {**PAPER_VPPO_7B, "geo3k": 30.0}, questions=100)
    report = tmp_path / "report.md"
    assert main(["check", str(cand), "--against", str(ref), "--report", str(report)]) == 1
    printed = capsys.readouterr()
    geo3k = row(printed.out, "geo3k")
    assert geo3k[:4] == ["geo3k", "100", "30.00 ± 4.61", "46.50 ± 4.99"] and geo3k[4].startswith("-16.50 ± ")
    assert geo3k[-1] == "REGRESSION" and row(printed.out, "mathverse")[4:] == ["+0.00 ± 0.00", "1", "1",
                                                                                "no significant change"]
    assert "Holm step-down" in printed.out and "the same on both sides" in printed.out
    assert "REGRESSION on geo3k, avg" in printed.err and report.read_text() in printed.out


def test_an_equal_candidate_passes_and_noise_is_not_a_regression(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, questions=100)
    # +-1 point per benchmark: one question's worth of samples moved each way, paired differences of +-8 points
    # on 1-2 questions per benchmark; the mean over benchmarks is unchanged.
    cand = write_results(tmp_path / "cand", {k: v + (-1.0) ** i for i, (k, v) in enumerate(PAPER_VPPO_7B.items())},
                         questions=100)
    assert main(["check", str(ref), "--against", str(ref)]) == 0
    assert main(["check", str(cand), "--against", str(ref)]) == 0
    assert "REGRESSION" not in "".join(capsys.readouterr())


def test_max_drop_gates_significant_drops(tmp_path):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, questions=1000)
    cand = write_results(tmp_path / "cand", {**PAPER_VPPO_7B, "mmk12": 80.8}, questions=1000)  # -2: 20 questions
    assert main(["check", str(cand), "--against", str(ref)]) == 1
    assert main(["check", str(cand), "--against", str(ref), "--max-drop", "3"]) == 0
    assert main(["check", str(cand), "--against", str(ref), "--max-drop", "1.5"]) == 1


def test_equal_drops_on_every_question_are_tested_not_infinite(tmp_path, capsys):
    """Both standard errors 0 (every question 25% vs 12.5%): the old z was -inf; the sign-flip p is 1/4 with two
    questions (cannot be significant) and tiny with twenty."""
    for questions, expected_rc, p in ((2, 0, "0.25"), (20, 1, "3.87e-06")):
        ref = write_results(tmp_path / f"ref{questions}", {"geo3k": 25.0}, questions=questions, even=True)
        cand = write_results(tmp_path / f"cand{questions}", {"geo3k": 12.5}, questions=questions, even=True)
        assert main(["check", str(cand), "--against", str(ref), "--benchmarks", "geo3k"]) == expected_rc
        cells = row(capsys.readouterr().out, "geo3k")
        assert cells[2:6] == ["12.50 ± 0.00", "25.00 ± 0.00", "-12.50 ± 0.00", p]


def test_paper_reference_uses_the_candidate_se_and_the_stated_tolerance(tmp_path, capsys):
    scores = paper_reference("paper:qwen2.5-vl-7b/vppo", default_reference_dir())
    assert {k: s.accuracy for k, s in scores.items() if k != "avg"} == PAPER_VPPO_7B
    assert scores["avg"] == Score(57.5, None)
    assert paper_reference("paper:qwen2.5-vl-7b/vppo_tas_only", default_reference_dir()) == {"avg": Score(55.8, None)}
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B)  # the real sets' row counts: the paper's protocol
    assert main(["check", str(cand), "--against", "paper:qwen2.5-vl-7b/vppo"]) == 0
    out = capsys.readouterr().out
    assert row(out, "avg")[2:5] == ["57.45 ± 0.49", "57.50", "-0.05 ± 0.49"]  # mean of the 8 vs the paper's Avg
    assert "2 points of protocol tolerance" in out
    assert main(["check", str(cand), "--against", "paper:qwen2.5-vl-32b/vppo"]) == 1  # 32B Avg only: 64.6
    low = write_results(tmp_path / "low", {**PAPER_VPPO_7B, "geo3k": 44.0})  # 2.5 points below: se 2.0 at 601 rows
    assert main(["check", str(low), "--against", "paper:qwen2.5-vl-7b/vppo"]) == 0
    assert main(["check", str(low), "--against", "paper:qwen2.5-vl-7b/vppo", "--paper-tolerance", "0"]) == 0
    worse = write_results(tmp_path / "worse", {**PAPER_VPPO_7B, "geo3k": 30.0})
    assert main(["check", str(worse), "--against", "paper:qwen2.5-vl-7b/vppo"]) == 1


def test_a_protocol_or_question_difference_never_reaches_a_verdict_silently(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", {"geo3k": 40.0}, questions=10)
    other = write_results(tmp_path / "other", {"geo3k": 40.0}, questions=10, limit=10, backend="hf",
                          sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 16,
                                    "repetition_penalty": 1.0, "n": 8})
    assert main(["check", str(other), "--against", str(ref), "--benchmarks", "geo3k"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not like for like" in err
    assert all(s in err for s in ("max new tokens 16 vs 2048", "limit 10 vs None", "backend hf vs vllm"))
    assert main(["check", str(other), "--against", str(ref), "--benchmarks", "geo3k", "--allow-protocol-mismatch"]) == 0
    assert "PROTOCOL MISMATCH (--allow-protocol-mismatch): limit 10 vs None (all benchmarks)" in capsys.readouterr().out
    fewer = write_results(tmp_path / "fewer", {"geo3k": 40.0}, questions=8)
    assert main(["check", str(fewer), "--against", str(ref), "--benchmarks", "geo3k", "--allow-protocol-mismatch"]) == 2
    assert ("the question sets differ (candidate 8 questions, reference 10; 0 only in the candidate, 2 only in the "
            "reference)") in capsys.readouterr().err
    paper_like = write_results(tmp_path / "limited", {"geo3k": 46.5}, questions=10, limit=10)
    assert main(["check", str(paper_like), "--against", "paper:qwen2.5-vl-7b/vppo", "--benchmarks", "geo3k"]) == 2
    assert "limit 10 vs the paper's None" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line_on_stderr(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, questions=10)
    partial = write_results(tmp_path / "partial", {"geo3k": 40.0}, questions=10)
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    (data / "geo3k.json").write_text("[]")
    for argv, message in (
            ([str(partial), "--against", str(ref)], "mathverse.json: missing"),
            ([str(ref), "--against", "paper:qwen2.5-vl-7b/unknown"], "no row for model"),
            ([str(data), "--against", str(ref)], "an evaluation data folder (manifest.json)"),
            ([str(ref), "--against", str(data)], "an evaluation data folder (manifest.json)"),
            ([str(ref), "--against", str(ref), "--alpha", "1.5"], "--alpha 1.5: must lie in (0, 1)")):
        assert main(["check", *argv]) == 2
        printed = capsys.readouterr()
        assert printed.out == "" and printed.err.count("\n") == 1 and message in printed.err, (argv, printed)
    (tmp_path / "ref" / "geo3k.json").write_text("{}")
    assert main(["check", str(partial), "--against", str(ref), "--benchmarks", "geo3k"]) == 2
    assert "field 'accuracy': missing" in capsys.readouterr().err
    (tmp_path / "ref" / "geo3k.json").write_text("[]")  # a data file copied into a results folder
    assert main(["check", str(partial), "--against", str(ref), "--benchmarks", "geo3k"]) == 2
    assert "geo3k.json: a JSON list, not a vppo.eval/1 result object" in capsys.readouterr().err


def test_a_result_whose_samples_disagree_is_refused(tmp_path, capsys):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, questions=1000)
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B, questions=1000)
    stated = json.loads((cand / "geo3k.json").read_text())
    (cand / "geo3k.json").write_text(json.dumps({**stated, "accuracy": 60.0}))  # edited by hand: samples say 46.5
    assert main(["check", str(cand), "--against", str(ref)]) == 2
    assert "geo3k.json: disagrees with geo3k.samples.jsonl: accuracy 60.0 but the samples give 46.5" in (
        capsys.readouterr().err)
    (cand / "geo3k.json").write_text(json.dumps(stated))
    (cand / "geo3k.samples.jsonl").write_text("\n".join((cand / "geo3k.samples.jsonl").read_text().splitlines()[:-5]))
    assert main(["check", str(cand), "--against", str(ref)]) == 2
    assert "n_questions 1000 but the samples give 995" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated result", "binary result", "missing samples"])
def test_damaged_result_files_are_bad_input(tmp_path, capsys, damage):
    ref = write_results(tmp_path / "ref", PAPER_VPPO_7B, questions=10)
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B, questions=10)
    target = cand / "mmk12.json"
    if damage == "truncated result":
        target.write_text(target.read_text()[:100])
    elif damage == "binary result":
        target.write_bytes(b"\xff\xfe\x00garbage")
    else:
        (cand / "mmk12.samples.jsonl").unlink()
    assert main(["check", str(cand), "--against", str(ref)]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith("vppo check: ") and "mmk12" in printed.err


def test_a_corrupted_checkpoint_candidate_is_bad_input(tmp_path, capsys, tiny_model_dir):
    import shutil

    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc = main(["check", str(broken), "--against", "paper:qwen2.5-vl-7b/vppo", "--eval-out", str(tmp_path / "e"),
               "--data", str(tmp_path / "no-data")])
    assert rc == 2 and "unreadable weights" in capsys.readouterr().err


def test_compare_gives_the_paired_differences_with_intervals(tmp_path, capsys):
    a = write_results(tmp_path / "a", PAPER_VPPO_7B, questions=100)
    b = write_results(tmp_path / "b", {**PAPER_VPPO_7B, "geo3k": 30.0}, questions=100)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    geo3k = row(out, "geo3k")
    assert geo3k[:5] == ["geo3k", "100", "46.50 ± 4.99", "30.00 ± 4.61", "-16.50"]
    low, high = (float(x) for x in geo3k[5].strip("[]").split(","))
    assert low < -16.5 < high < 0 and float(geo3k[6]) < 1e-4
    assert row(out, "mathverse")[4:] == ["+0.00", "[+0.00, +0.00]", "1", "1"] and "REGRESSION" not in out
    short = write_results(tmp_path / "short", {"geo3k": 30.0}, questions=50)
    assert main(["compare", str(a), str(short), "--benchmarks", "geo3k"]) == 2
    assert "question sets differ" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unchanged_checkpoint_passes_against_its_own_limited_run(tmp_path, tiny_model_dir, capsys):
    """The README's first form against a reference made with --limit 2 and 16 new tokens: the checkpoint is
    evaluated with that protocol (not check's own defaults) and passes; an option contradicting it, or other
    data, is refused before evaluating."""
    from vppo.data.eval_data import prepare_eval_data
    from vppo.evaluation.results import read_result

    keys = "geo3k"
    data = prepare_eval_data("fixtures", tmp_path / "data", n_rows=3, benchmarks=keys)
    ref, mine = tmp_path / "ref", tmp_path / "cmp" / "b"  # where compare --eval-out cmp puts side B: reused there
    assert main(["eval", str(tiny_model_dir), "--data", str(data), "--benchmarks", keys, "--out", str(ref),
                 "--max-new-tokens", "16", "--limit", "2", "--samples", "2"]) == 0
    check = ["check", str(tiny_model_dir), "--data", str(data), "--eval-out", str(mine), "--against", str(ref),
             "--benchmarks", keys]
    assert main(check) == 0
    out = capsys.readouterr().out
    assert "avg@2, 16 new tokens, limit 2, backend hf, the same on both sides" in out
    for key in keys.split(","):
        result = read_result(mine / f"{key}.json")
        assert (result["limit"], result["k"], result["sampling"]["max_new_tokens"], result["n_questions"]) == (2, 2, 16, 2)
    assert main([*check, "--max-new-tokens", "32"]) == 2
    assert "the options differ from the reference's protocol: max new tokens 32 vs 16" in capsys.readouterr().err
    other = prepare_eval_data("fixtures", tmp_path / "other", n_rows=3, seed=1, benchmarks=keys)
    assert main([*check[:3], str(other), *check[4:]]) == 2
    assert "not the data the reference was evaluated on" in capsys.readouterr().err
    # compare: a checkpoint side takes the results side's protocol, so check's evaluation is reused
    assert main(["compare", str(ref), str(tiny_model_dir), "--data", str(data), "--benchmarks", keys, "--eval-out",
                 str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and row(out, "geo3k")[:2] == ["geo3k", "2"]
