"""Tables next to the paper's numbers, from synthetic `vppo eval` results computed by hand (issue 5)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from vppo.catalog import PAPER_BENCHMARKS as BENCHMARKS  # the eight: what "paper" (the default) names
from vppo.cli import main as vppo_main
from vppo.reference import load_reference
from vppo.reporting.results_io import ResultsError, load_eval_frame, load_eval_json
from doubles.reporting_inputs import eval_result, write_eval_result
from vppo.reporting.tables import build_table, tex_escape, to_csv, to_latex, to_markdown

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
KEYS = [b.key for b in BENCHMARKS]
#: vppo: 10, 20, ..., 80 with stderr 0.8 each -> Avg 45.0, se sqrt(8 * 0.64) / 8; paper Avg 57.5.
VPPO_ACC = {key: 10.0 * (i + 1) for i, key in enumerate(KEYS)}
VPPO_AVG, VPPO_AVG_SE = 45.0, math.sqrt(8 * 0.8**2) / 8


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for key in KEYS:
        write_eval_result(root, "tiny", "vppo", key, VPPO_ACC[key], 0.8)
        write_eval_result(root, "tiny", "vppo_k0.2", key, 40.0, 1.0)
        if key != "geo3k":  # dapo misses one benchmark: its Avg must be missing, not a 7-benchmark mean
            write_eval_result(root, "tiny", "dapo", key, 50.0, 1.0)
    return root


@pytest.fixture(scope="module")
def main_table(eval_root):
    cells = load_eval_frame(eval_root, ["tiny"])
    return build_table("main", "tiny", "qwen2.5-vl-7b", ["base", "dapo", "vppo", "vppo_k0.2"], KEYS, cells,
                       load_reference(REFERENCE), label="SMOKE RUN: tiny vs 7B")


def _cell(table, method, bench):
    row = table[(table["method"] == method) & (table["benchmark"] == bench)]
    assert len(row) == 1
    return row.iloc[0]


def test_values_average_stderr_and_difference_by_hand(main_table):
    mathverse = _cell(main_table, "vppo", "mathverse")
    assert (mathverse["ours"], mathverse["stderr"], mathverse["paper"]) == (10.0, 0.8, 71.6)
    assert mathverse["diff"] == pytest.approx(10.0 - 71.6)
    avg = _cell(main_table, "vppo", "avg")
    assert avg["ours"] == pytest.approx(VPPO_AVG)
    assert avg["stderr"] == pytest.approx(VPPO_AVG_SE)  # 0.2828...
    assert avg["paper"] == 57.5 and avg["diff"] == pytest.approx(VPPO_AVG - 57.5)
    assert avg["n_questions"] == 8 * 5 and avg["backend"] == "hf" and avg["k"] == "8"


def test_missing_cells_are_missing_not_zero(main_table):
    assert _cell(main_table, "dapo", "geo3k")["status"] == "missing"
    assert pd.isna(_cell(main_table, "dapo", "geo3k")["ours"])
    assert pd.isna(_cell(main_table, "dapo", "avg")["ours"])  # 7 of 8 benchmarks: no Avg
    assert _cell(main_table, "dapo", "avg")["paper"] == 55.0  # the paper's value is still shown
    assert (main_table[main_table["method"] == "base"]["status"] == "missing").all()
    sweep = main_table[main_table["method"] == "vppo_k0.2"]
    assert sweep["paper"].isna().all() and sweep["ours"].notna().all()  # no paper row for the sweep


def test_a_method_without_paper_row_is_labelled_plainly(main_table):
    md = to_markdown(main_table)
    sweep = md.splitlines()[md.splitlines().index(next(l for l in md.splitlines() if l.startswith("| `vppo_k0.2`"))) + 1]
    assert sweep.startswith("| | paper |") and "(nan)" not in md


def test_markdown_shows_label_missing_and_values(main_table):
    md = to_markdown(main_table)
    assert md.splitlines()[2] == "> **SMOKE RUN: tiny vs 7B**"
    dapo_ours = next(line for line in md.splitlines() if line.startswith("| `dapo` | ours"))
    cells = [c.strip() for c in dapo_ours.strip("|").split("|")]
    assert cells[2 + KEYS.index("geo3k")] == "—" and cells[-1] == "—"
    assert "0.0" not in cells
    vppo_ours = next(line for line in md.splitlines() if line.startswith("| `vppo` | ours"))
    assert vppo_ours.rstrip(" |").endswith("45.0 ± 0.3")
    assert "| | Δ | -61.6 |" in md


def test_csv_is_long_with_provenance_and_empty_missing(main_table):
    frame = pd.read_csv(pd.io.common.StringIO(to_csv(main_table)))
    for column in ("ours", "stderr", "paper", "diff", "n_questions", "backend", "k", "seed", "checkpoint_sha256",
                   "label", "status"):
        assert column in frame.columns
    assert len(frame) == 4 * 9
    assert (frame["label"] == "SMOKE RUN: tiny vs 7B").all()
    geo = frame[(frame["method"] == "dapo") & (frame["benchmark"] == "geo3k")].iloc[0]
    assert pd.isna(geo["ours"]) and pd.isna(geo["diff"]) and geo["status"] == "missing"
    assert frame[frame["method"] == "vppo"]["checkpoint_sha256"].nunique() == 1


def test_latex_is_escaped_and_well_formed(eval_root):
    cells = load_eval_frame(eval_root, ["tiny"])
    label = "SMOKE_RUN 100% & #1 {tiny} $x$ ~^\\"
    tex = to_latex(build_table("ablation", "tiny", "qwen2.5-vl-7b", ["vppo", "vppo_tas_only", "vppo_k0.2"], KEYS,
                               cells, load_reference(REFERENCE), label))
    assert r"\textbf{SMOKE\_RUN 100\% \& \#1 \{tiny\} \$x\$ \textasciitilde{}\textasciicircum{}\textbackslash{}}" in tex
    assert "vppo\\_tas\\_only & ours" in tex and "vppo\\_k0.2 & ours" in tex
    assert re.search(r"(?<!\\)_", tex.split("\\begin{tabular}")[1]) is None  # no bare underscore in the body
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    rows = [r for r in body.split("\\\\") if "&" in r]
    assert all(len(re.split(r"(?<!\\)&", r)) == 2 + 9 for r in rows)  # method, row, 8 benchmarks, Avg
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    assert r"\toprule" in tex and r"\bottomrule" in tex
    vppo_avg = next(r for r in rows if r.strip().startswith("vppo & ours")).split("&")[-1].strip()
    assert vppo_avg == r"$45.0\pm0.3$"
    tas_ours = next(r for r in rows if "tas\\_only & ours" in r)
    assert tas_ours.count("--") == 9  # nothing computed: every cell shown as missing
    assert r"$-12.5$" in tex  # vppo Avg 45.0 vs the ablation table's 57.5
    assert tex_escape("a_b") == r"a\_b"


def test_scaling_table_compares_avg_only(eval_root):
    cells = load_eval_frame(eval_root, ["tiny"])
    table = build_table("scaling", "tiny", "qwen2.5-vl-32b", ["vppo"], KEYS, cells, load_reference(REFERENCE), "x")
    assert _cell(table, "vppo", "avg")["paper"] == 64.6
    assert table[table["benchmark"] != "avg"]["paper"].isna().all()
    assert table[table["benchmark"] != "avg"]["ours"].notna().all()


def test_subset_of_benchmarks_has_no_avg(eval_root):
    cells = load_eval_frame(eval_root, ["tiny"])
    table = build_table("main", "tiny", "qwen2.5-vl-7b", ["vppo"], ["mathverse", "geo3k"], cells,
                        load_reference(REFERENCE))
    assert pd.isna(_cell(table, "vppo", "avg")["ours"])


@pytest.mark.parametrize("change, field", [
    ({"schema": "vppo.eval/0"}, "schema"),
    ({"accuracy": "high"}, "accuracy"),
    ({"stderr": -1.0}, "stderr"),
    ({"benchmark": "geo3k"}, "benchmark"),
])
def test_malformed_result_names_file_and_field(tmp_path, change, field):
    path = tmp_path / "tiny" / "vppo" / "mathverse.json"
    path.parent.mkdir(parents=True)
    data = eval_result("tiny", "vppo", "mathverse", 50.0, 1.0)
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=rf"{re.escape(str(path))}: .*'{field}'"):
        load_eval_json(path)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "tiny" / "vppo" / "mathverse.json"
    path.parent.mkdir(parents=True)
    data = eval_result("tiny", "vppo", "mathverse", 50.0, 1.0)
    del data["stderr"], data["sampling"]["top_k"]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError) as info:
        load_eval_frame(tmp_path)
    assert str(path) in str(info.value)
    assert "field 'stderr': missing" in str(info.value) and "field 'sampling.top_k': missing" in str(info.value)


def test_cli_writes_three_formats_and_reports_bad_input(eval_root, tmp_path, capsys):
    out = tmp_path / "tables" / "main"
    argv = ["tables", "--table", "main", "--model", "tiny", "--paper-model", "qwen2.5-vl-7b", "--methods",
            "dapo,vppo", "--eval-root", str(eval_root), "--reference-dir", str(REFERENCE), "--out", str(out)]
    assert vppo_main(argv + ["--label", "SMOKE RUN"]) == 0
    for suffix in ("md", "csv", "tex"):
        assert "SMOKE RUN" in (out.parent / f"main.{suffix}").read_text()
    assert vppo_main(argv) == 0  # no --label: tiny vs 7B still gets a banner saying so
    assert "not a like-for-like comparison" in (out.parent / "main.md").read_text()
    bad = tmp_path / "bad"
    (bad / "tiny" / "vppo").mkdir(parents=True)
    (bad / "tiny" / "vppo" / "geo3k.json").write_text("{\"schema\": \"vppo.eval/1\"}")
    code = vppo_main(["tables", "--table", "main", "--model", "tiny", "--methods", "vppo", "--eval-root", str(bad),
                      "--reference-dir", str(REFERENCE), "--out", str(out)])
    assert code == 2 and "geo3k.json" in capsys.readouterr().err


def test_baseline_rows_say_their_settings_are_ours(main_table, eval_root):
    md = to_markdown(main_table)
    note = next(line for line in md.splitlines() if line.startswith("Note: "))
    assert "dapo settings are ours" in note and "grpo" not in note  # only the methods shown
    cells = load_eval_frame(eval_root, ["tiny"])
    with_grpo = build_table("main", "tiny", "qwen2.5-vl-7b", ["grpo", "vppo"], KEYS, cells, load_reference(REFERENCE))
    assert "grpo settings are ours" in to_markdown(with_grpo) and "grpo settings are ours" in to_latex(with_grpo)
    only_vppo = build_table("ablation", "tiny", "qwen2.5-vl-7b", ["vppo"], KEYS, cells, load_reference(REFERENCE))
    assert "Note:" not in to_markdown(only_vppo) and "Note:" not in to_latex(only_vppo)


def test_a_table_without_paper_model_has_no_paper_rows(tmp_path):
    """The mini study's table (paper model "none") shows our rows only: no empty paper / Δ rows beside them."""
    from vppo.catalog import NO_PAPER_MODEL, TABLES

    assert TABLES["mini_study"].paper_model == NO_PAPER_MODEL
    eval_root = tmp_path / "eval"
    for method, value in (("base", 50.0), ("dapo", 60.0)):
        write_eval_result(eval_root, "mini", method, "mini_heldout", value, 1.0)
    out = tmp_path / "tables" / "mini_study"
    assert vppo_main(["tables", "--table", "mini_study", "--model", "mini", "--methods", "base,dapo", "--benchmarks",
                 "mini_heldout", "--eval-root", str(eval_root), "--reference-dir", str(REFERENCE),
                      "--out", str(out)]) == 0
    md, tex = out.with_suffix(".md").read_text(), out.with_suffix(".tex").read_text()
    assert "| `dapo` | ours | 60.0" in md and "| paper" not in md and "| Δ" not in md
    assert "dapo & ours" in tex and " & paper & " not in tex
