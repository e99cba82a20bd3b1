"""avg@k and its standard error on cases computed by hand (pure functions and the lmms-eval hooks)."""

from __future__ import annotations

import math

import pytest

from vppo.evaluation import tasklib
from vppo.evaluation.protocol import avg_at_k, avg_at_k_stderr

# Three questions, 8 samples each: 3, 8 and 4 correct -> 15 / 24.
HAND = [[1, 1, 1, 0, 0, 0, 0, 0], [1] * 8, [0, 1, 0, 1, 0, 1, 0, 1]]


def test_avg_at_k_is_total_correct_over_total_samples():
    assert avg_at_k(HAND) == pytest.approx(15 / 24)
    # Per-question accuracies 0.375, 1, 0.5: mean 0.625, sample variance ((.25)^2 + (.375)^2 + (.125)^2) / 2.
    assert avg_at_k_stderr(HAND) == pytest.approx(math.sqrt((0.0625 + 0.140625 + 0.015625) / 2 / 3))


def test_avg_at_k_is_not_a_mean_of_means_when_counts_differ():
    assert avg_at_k([[1, 1], [0, 0, 0, 0, 0, 0]]) == pytest.approx(2 / 8)


def test_stderr_degenerate_cases():
    assert avg_at_k_stderr([]) == 0.0 and avg_at_k_stderr([[1, 0]]) == 0.0
    assert avg_at_k([]) == 0.0


def test_lmms_hooks_aggregate_to_the_hand_value():
    answer = "7"
    items = []
    for i, pattern in enumerate(HAND):
        responses = [rf"<think>x</think>\boxed{{{answer if c else 8}}}" for c in pattern]
        items.append(tasklib.process_results({"answer": answer, "row_id": f"q{i}"}, responses)[tasklib.METRIC])
    assert [item["correct"] for item in items] == HAND
    assert [item["score"] for item in items] == [37.5, 100.0, 50.0]
    assert tasklib.aggregate_avg_at_k(items) == pytest.approx(62.5)


def test_a_row_whose_image_entry_is_not_a_path_stops_the_scan_naming_the_row(tmp_path):
    from vppo.data.eval_data import EvalDataError, scan_rows

    good = {"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "1"}],
            "images": []}
    bad = {**good, "images": [None]}
    with pytest.raises(EvalDataError, match=r"geo3k \(.*geo3k.json\) row 1: field 'images'"):
        scan_rows(tmp_path, "geo3k", [{**good, "messages": [good["messages"][0] | {"content": "Q"},
                                                            good["messages"][1]]}, bad])


def test_an_empty_answer_is_wrong_even_against_an_empty_box():
    from vppo.evaluation.protocol import score_responses

    scored = score_responses([r"\boxed{}", "", r"<think>x</think>\boxed{3}"], "  ")
    assert scored.correct == [0, 0, 0] and scored.accuracy == 0.0
    item = tasklib.process_results({"answer": "", "row_id": "4"}, [r"\boxed{}"] * 8)[tasklib.METRIC]
    assert item["correct"] == [0] * 8 and item["score"] == 0.0


def test_result_files_require_exactly_the_versions_every_stage_records():
    from vppo import VERSION_KEYS, package_versions
    from vppo.evaluation.results import RESULT_JSON_SCHEMA

    assert RESULT_JSON_SCHEMA["properties"]["versions"]["required"] == list(VERSION_KEYS)
    assert tuple(package_versions()) == VERSION_KEYS
    assert tuple(package_versions("trl"))[-1] == "trl"
