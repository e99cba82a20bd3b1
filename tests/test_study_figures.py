"""The seed study's figures (`vppo study --train-root/--analysis-root`): seed bands, the dependency findings,
and the report's study section showing them."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from doubles.reporting_inputs import analysis_result, write_eval_result
from vppo.cli import main
from vppo.fileio import write_json_atomic, write_jsonl_atomic
from vppo.reporting.analysis import ANALYSIS_SCHEMA_ID, breakdown, summarize
from vppo.reporting.report import build_report
from vppo.reporting.results_io import analysis_file, load_training_log, training_log_file
from vppo.reporting.study_figures import (CURVES_TABLE, DEPENDENCY_FINDINGS, TRAINING_CURVES, concentration_points,
                                          curve_table, response_means, seed_band, with_mean_dependency)

MODELS, METHODS = ["m0", "m1", "m2"], ["dapo", "vppo"]


def _frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records)


def test_seed_band_is_mean_min_max_over_the_seeds_that_logged_the_step():
    seeds = [_frame([{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.4}]),
             _frame([{"step": 1, "reward": 0.3}, {"step": 2, "reward": None}, {"step": 3, "reward": 0.9}]),
             _frame([{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.6}])]
    band = seed_band(seeds, "reward").set_index("step")
    assert band.loc[1].tolist() == pytest.approx([0.3, 0.1, 0.5, 3])
    assert band.loc[2].tolist() == pytest.approx([0.5, 0.4, 0.6, 2])  # the seed without a value is left out
    assert band.loc[3].tolist() == pytest.approx([0.9, 0.9, 0.9, 1])
    assert seed_band(seeds, "entropy").empty


def test_mean_dependency_weights_kept_and_dropped_tokens():
    frame = _frame([{"dependency_kept_mean": 0.3, "dependency_dropped_mean": 0.01, "kept_token_fraction": 0.4},
                    {"dependency_kept_mean": 0.2, "dependency_dropped_mean": None, "kept_token_fraction": 1.0},
                    {"dependency_kept_mean": None, "dependency_dropped_mean": None, "kept_token_fraction": 1.0}])
    values = with_mean_dependency(frame.astype(float))["dependency_mean"].tolist()
    assert values[:2] == pytest.approx([0.4 * 0.3 + 0.6 * 0.01, 0.2]) and math.isnan(values[2])


def test_concentration_points_whole_curve_or_the_two_recorded_points():
    token = summarize([[4.0, 3.0, 2.0, 1.0, 0.0]])["token_dependency"]
    xs, ys, whole = concentration_points({"token_dependency": token})
    assert whole and (xs[0], ys[0]) == (0.0, 0.0) and len(xs) == 101
    assert ys[xs.index(0.2)] == pytest.approx(0.4) and ys[-1] == pytest.approx(1.0)
    old = {k: v for k, v in token.items() if k != "concentration"}  # an analysis from before the curve
    assert concentration_points({"token_dependency": old}) == ([0.0, 0.1, 0.4], [0.0, 0.4, 0.7], False)


def _logs(train_root, rewards: dict) -> None:
    """rewards: (model, method) -> reward per step; vppo logs the dependency of kept and dropped tokens."""
    for (model, method), values in rewards.items():
        records = [{"step": s, "reward": r, "entropy": 0.3 - 0.01 * s, "completions/mean_length": 12.0 + s,
                    "kept_token_fraction": 0.4 if method == "vppo" else 1.0,
                    "dependency_kept_mean": 0.3 if method == "vppo" else None,
                    "dependency_dropped_mean": 0.01 if method == "vppo" else None,
                    "alpha_mean": 1.0 if method == "vppo" else None,
                    "alpha_max": 1.6 if method == "vppo" else None} for s, r in enumerate(values, start=1)]
        write_jsonl_atomic(training_log_file(train_root, model, method), records)


def _analysis(model: str, method: str, scale: float) -> dict:
    """An analysis as `vppo analyze` writes it: two benchmarks, roles per token, per-response records."""
    rng = np.random.default_rng(int(scale * 100))
    per_trajectory, roles, benches, records = [], [], [], []
    for i in range(8):
        bench = "mini_heldout" if i % 2 == 0 else "mini_control"
        deps = rng.exponential(scale * (1.0 if bench == "mini_heldout" else 0.3), size=10).tolist()
        per_trajectory.append(deps)
        roles.append(["perception"] * 3 + ["answer"] * 2 + ["format"] * 5)
        benches.append([bench] * 10)
        records.append({"benchmark": bench, "row_id": str(i // 2), "sample": i % 2, "n_tokens": 10,
                        "mean_dependency": float(np.mean(deps))})
    return {"schema": ANALYSIS_SCHEMA_ID, "model": model, "method": method, "estimator": "k3",
            **summarize(per_trajectory), "by_role": breakdown(per_trajectory, roles),
            "by_benchmark": breakdown(per_trajectory, benches), "trajectories": records}


@pytest.fixture()
def study_inputs(tmp_path):
    eval_root, train_root, analysis_root = tmp_path / "eval", tmp_path / "train", tmp_path / "analysis"
    for bench in ("mini_heldout", "mini_control"):
        write_eval_result(eval_root, "m0", "base", bench, 50.0, 1.0)
        for i, model in enumerate(MODELS):
            for method in METHODS:
                write_eval_result(eval_root, model, method, bench, 55.0 + i, 1.0)
    _logs(train_root, {(model, method): [0.1 * (i + 1) + 0.05 * s for s in range(4)]
                       for i, model in enumerate(MODELS) for method in METHODS})
    for method, scale in (("base", 0.05), ("dapo", 0.08), ("vppo", 0.1)):
        write_json_atomic(analysis_file(analysis_root, "m0", method), _analysis("m0", method, scale))
    return tmp_path


def _study_args(root, *extra) -> list[str]:
    return ["study", "--models", ",".join(MODELS), "--methods", ",".join(METHODS), "--baseline", "dapo",
            "--start", "m0/base", "--benchmarks", "mini_heldout,mini_control", "--eval-root", str(root / "eval"),
            "--out", str(root / "study"), *extra]


def test_study_draws_both_figures_and_the_report_shows_them(study_inputs, tmp_path):
    root = study_inputs
    assert main(_study_args(root, "--train-root", str(root / "train"), "--analysis-root", str(root / "analysis"),
                            "--analysis-model", "m0", "--analysis-methods", "base,dapo,vppo")) == 0
    out = root / "study"
    for png in (TRAINING_CURVES, DEPENDENCY_FINDINGS):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = pd.read_csv(out / CURVES_TABLE)
    reward = drawn[(drawn["method"] == "vppo") & (drawn["metric"] == "reward")].set_index("step")
    # seed i's reward at step s is 0.1 (i + 1) + 0.05 (s - 1): mean over seeds 0.2 + 0.05 (s - 1), min, max
    assert reward.loc[1, ["mean", "low", "high", "n_seeds"]].tolist() == pytest.approx([0.2, 0.1, 0.3, 3])
    assert reward.loc[4, "mean"] == pytest.approx(0.35)
    dependency = drawn[drawn["metric"] == "dependency_mean"]
    assert set(dependency["method"]) == {"vppo"} and dependency["mean"].tolist() == pytest.approx([0.4 * 0.3 + 0.6 * 0.01] * 4)
    assert set(drawn["metric"]) == {"reward", "entropy", "completions/mean_length", "dependency_mean",
                                    "kept_token_fraction", "alpha_max"}

    page = build_report(None, None, root / "eval", tmp_path / "report.html", study_dir=out)
    assert page.count("data:image/png;base64,") == 2 and "min..max" in page
    linked = build_report(None, None, root / "eval", tmp_path / "sub" / "linked.html", study_dir=out, link_figures=True)
    assert 'src="../study/training_curves.png"' in linked


def test_report_builds_from_a_study_without_figures(study_inputs, tmp_path):
    assert main(_study_args(study_inputs)) == 0
    assert not (study_inputs / "study" / TRAINING_CURVES).exists()
    page = build_report(None, None, study_inputs / "eval", tmp_path / "report.html", study_dir=study_inputs / "study")
    assert "Seed study" in page and "<img" not in page


def test_findings_figure_draws_analyses_from_before_the_breakdowns(study_inputs):
    root = study_inputs
    write_json_atomic(analysis_file(root / "analysis", "m0", "dapo"), analysis_result("m0", "dapo"))  # no by_role
    assert main(_study_args(root, "--analysis-root", str(root / "analysis"), "--analysis-model", "m0",
                            "--analysis-methods", "dapo,vppo")) == 0
    assert (root / "study" / DEPENDENCY_FINDINGS).is_file()


def test_response_means_grouped_by_benchmark():
    analysis = _analysis("m0", "vppo", 0.1)
    groups = response_means(analysis)
    assert set(groups) == {"mini_heldout", "mini_control"} and len(groups["mini_heldout"]) == 4
    assert sorted(groups["mini_heldout"] + groups["mini_control"]) == sorted(analysis["trajectory_mean_dependency"]["values"])
    del analysis["trajectories"]
    assert response_means(analysis) == {"all": analysis["trajectory_mean_dependency"]["values"]}


@pytest.mark.parametrize("broken, message", [
    ("missing_log", "m2/vppo/training_log.jsonl: missing"),
    ("bad_log", "field 'entropy'"),
    ("missing_analysis", "analysis/m0/vppo.json: missing"),
    ("no_methods", "--analysis-root: needs --analysis-model"),
])
def test_bad_study_figure_inputs_are_one_line_exit_2(study_inputs, broken, message):
    root = study_inputs
    extra = ["--train-root", str(root / "train"), "--analysis-root", str(root / "analysis"), "--analysis-model", "m0",
             "--analysis-methods", "base,dapo,vppo"]
    if broken == "missing_log":
        training_log_file(root / "train", "m2", "vppo").unlink()
    elif broken == "bad_log":
        training_log_file(root / "train", "m1", "dapo").write_text('{"step": 1, "entropy": "high"}\n')
    elif broken == "missing_analysis":
        analysis_file(root / "analysis", "m0", "vppo").unlink()
    else:
        extra = extra[:4]
    done = subprocess.run([sys.executable, "-m", "vppo", *_study_args(root, *extra)], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_training_log_reads_the_study_curve_keys(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 2, "entropy": 0.2, "completions/mean_length": 13}\n{"step": 1}\n')
    frame = load_training_log(path)
    assert math.isnan(frame["entropy"].iloc[0]) and frame["entropy"].iloc[1] == 0.2  # sorted by step
    assert frame["completions/mean_length"].iloc[1] == 13.0 and math.isnan(frame["dependency_kept_mean"].iloc[0])
    assert curve_table({"dapo": [frame]})["metric"].unique().tolist() == ["entropy", "completions/mean_length"]
