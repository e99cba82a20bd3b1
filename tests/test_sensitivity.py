"""`vppo sensitivity`: the table maths on hand-computed cells, and the command end to end on the tiny model."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from vppo.errors import InputError
from vppo.reporting.sensitivity_table import (comparison_rows, question_comparison, seed_comparison, t_quantile,
                                              write_outputs)


def test_question_comparison_is_the_paired_mean_with_its_t_interval():
    baseline = {"0": [1, 1, 0, 0], "1": [0, 0, 0, 0], "2": [1, 1, 1, 1]}
    alternative = {"0": [1, 1, 1, 0], "1": [1, 1, 0, 0], "2": [1, 1, 1, 1]}
    result = question_comparison(baseline, alternative)
    diffs = [25.0, 50.0, 0.0]  # points per question
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2) / math.sqrt(3)
    assert result["diff"] == pytest.approx(mean) and result["se"] == pytest.approx(se) and result["n"] == 3
    assert result["high"] - result["diff"] == pytest.approx(4.302652729911275 * se)  # t(0.975, 2 df)
    assert result["baseline_avg"] == pytest.approx(100 * 6 / 12) and result["alternative_avg"] == pytest.approx(100 * 9 / 12)
    # two positive differences and a zero: the sign-flip p of a gain is 1/4, two-sided 1/2
    assert result["p"] == pytest.approx(0.5)


def test_a_smaller_cell_pairs_with_the_same_questions_of_the_larger_and_foreign_questions_are_refused():
    large = {"0": [1, 0], "1": [0, 0], "2": [1, 1]}
    small = {"0": [1, 1], "1": [0, 0]}
    result = question_comparison(large, small)
    assert result["n"] == 2 and result["diff"] == pytest.approx(25.0)
    assert result["baseline_avg"] == pytest.approx(25.0)  # on the two shared questions, not all three
    with pytest.raises(InputError, match="different questions"):
        question_comparison(large, {"7": [1, 1]})


def test_seed_comparison_takes_its_interval_from_the_seed_spread():
    per_seed = [{"diff": 1.0, "se": 0.5}, {"diff": 3.0, "se": 0.5}, {"diff": -1.0, "se": 1.0}]
    result = seed_comparison(per_seed)
    se = math.sqrt(((1 - 1) ** 2 + (3 - 1) ** 2 + (-1 - 1) ** 2) / 2) / math.sqrt(3)
    assert result["diff"] == pytest.approx(1.0) and result["se"] == pytest.approx(se)
    assert result["low"] == pytest.approx(1.0 - t_quantile(2) * se)
    assert result["se_questions"] == pytest.approx(math.sqrt(0.25 + 0.25 + 1.0) / 3)


def _cell(model, method, variant, correct, **extra):
    bounds = {"resize": {"min_pixels": 1024, "max_pixels": 589824}, "processor": {"min_pixels": 3136, "max_pixels": 12845056}}
    return {"model": model, "method": method, "variant": {"name": variant, "images": "protocol", "placement": "placeholder",
                                                          "image_bounds": bounds},
            "benchmark": "mini_heldout", "k": 2, "n_questions": len(correct), "accuracy": 0.0, "stderr": 0.0,
            "backend": "hf", "engine": {"dtype": "float32"}, "seed": 0, "checkpoint_sha256": f"{model}{method}" * 8,
            "data_sha256": "d" * 64, "wall_time_s": 1.0, "versions": {"vppo": "0.1", "torch": "2"},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 32, "n": 2},
            "correct": correct, **extra}


def test_rows_pair_cells_of_one_checkpoint_and_layout_runs_seed_by_seed(tmp_path):
    q = {"0": [1, 0], "1": [0, 0], "2": [1, 1]}
    cells = [_cell("m", "base", "protocol", q), _cell("m", "base", "top_k_none", {**q, "1": [1, 1]}),
             _cell("m", "base", "palette_own_mode", q, same_inputs_as="protocol"),
             _cell("m", "base", "palette_rgb_first", q, same_inputs_as="protocol")]
    for seed, gain in ((0, [1, 1]), (1, [0, 1]), (2, [0, 0])):
        cells += [_cell(f"mini_s{seed}", "vppo@balanced", "protocol", q),
                  _cell(f"mini_s{seed}", "vppo@grouped", "protocol", {**q, "1": gain})]
    rows = comparison_rows(cells)
    by_choice = {}
    for row in rows:
        by_choice.setdefault(row["choice"].split(":")[0], []).append(row)
    assert by_choice["top-k"][0]["diff"] == pytest.approx(100 / 3)
    assert by_choice["image mode (palette pictures)"][0]["interval_over"].startswith("identical")
    layout = by_choice["TAS layout (training)"]
    assert [r["seeds"] for r in layout] == ["0", "1", "2", "0,1,2"]
    assert layout[-1]["diff"] == pytest.approx((100 / 3 + 50 / 3 + 0) / 3)
    assert layout[-1]["interval_over"].startswith("seeds")
    out = tmp_path / "table"
    for cell in cells:
        path = tmp_path / "cells" / cell["model"] / cell["method"] / f"{cell['variant']['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cell))
    written = write_outputs(tmp_path, out)
    assert {p.name for p in written} == {"sensitivity.md", "sensitivity.csv", "cells.csv", "sensitivity.png"}
    table = list(csv.DictReader(io.StringIO((out / "sensitivity.csv").read_text())))
    assert len(table) == len(rows)
    for column in ("model", "method", "benchmark", "baseline_protocol", "versions", "eval_seed", "se_diff",
                   "ci95_low", "checkpoint_sha256"):
        assert all(row[column] != "" for row in table), column


def test_the_command_evaluates_cells_reuses_them_and_writes_the_table(tmp_path, tiny_model_dir, capsys):
    from vppo.cli import main
    from vppo.data.eval_data import prepare_eval_data

    data = prepare_eval_data("mini", tmp_path / "data", n_rows=3, benchmarks="mini_heldout")
    command = ["sensitivity", "--out", str(tmp_path / "study"), "--data", str(data),
               "--checkpoint", f"tiny/base={tiny_model_dir}", "--layout-run", f"grouped:0={tiny_model_dir}",
               "--variants", "protocol,top_k_none,palette_own_mode,palette_rgb_first", "--samples", "2",
               "--max-new-tokens", "4", "--limit", "2"]
    assert main(command) == 0
    cell = json.loads((tmp_path / "study" / "cells" / "tiny" / "base" / "top_k_none.json").read_text())
    assert cell["sampling"]["top_k"] == 0 and cell["n_questions"] == 2 and all(len(c) == 2 for c in cell["correct"].values())
    assert cell["versions"]["vppo"] and cell["engine"]["dtype"] == "float32" and cell["same_inputs_as"] is None
    palette = json.loads((tmp_path / "study" / "cells" / "tiny" / "base" / "palette_rgb_first.json").read_text())
    assert palette["same_inputs_as"] == "protocol"  # 84x84 pictures are never resized: pixel-identical inputs
    assert (tmp_path / "study" / "cells" / "mini_s0" / "vppo@grouped" / "protocol.json").is_file()
    table = (tmp_path / "study" / "sensitivity.md").read_text()
    assert "top-k: none vs 50" in table and "identical model inputs" in table
    capsys.readouterr()
    assert main(command) == 0
    assert capsys.readouterr().out.count("reusing") == 5
    assert main(command[:-2] + ["--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err
