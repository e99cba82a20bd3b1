"""`vppo analyze` on the tiny model: the data of the paper's two motivating figures (issue 5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vppo.cli import main as vppo_main
from vppo.data.eval_data import write_fixtures
from vppo.reporting.analysis import summarize
from vppo.reporting.results_io import load_analysis


def _finite(value) -> bool:
    """Every number in a JSON tree is finite (None is allowed: 'not defined', never NaN)."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_summary_by_hand():
    summary = summarize([[0.0, 1.0], [2.0, 3.0, 4.0]], bins=4)
    token, traj = summary["token_dependency"], summary["trajectory_mean_dependency"]
    assert token["n_tokens"] == 5 and token["mean"] == pytest.approx(2.0)
    assert token["quantiles"]["0.5"] == pytest.approx(2.0)
    assert token["fraction_above"]["1.0"] == pytest.approx(3 / 5)
    assert token["mass_share_top"]["0.4"] == pytest.approx((4 + 3) / 10)  # ceil(0.4 * 5) = 2 tokens
    assert token["mass_share_top"]["0.1"] == pytest.approx(4 / 10)
    assert token["histogram"]["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert token["histogram"]["counts"] == [1, 1, 1, 2]
    assert token["log_histogram"]["below_min"] == 1 and sum(token["log_histogram"]["counts"]) == 4
    assert traj["values"] == [0.5, 3.0] and traj["coefficient_of_variation"] == pytest.approx(1.25 / 1.75)
    empty = summarize([[]])
    assert empty["token_dependency"]["n_tokens"] == 0 and empty["trajectory_mean_dependency"]["values"] == []
    assert _finite(empty)
    with pytest.raises(ValueError, match="non-finite"):
        summarize([[float("nan")]])


def test_concentration_curve_by_hand():
    token = summarize([[4.0, 3.0], [2.0, 1.0, 0.0]])["token_dependency"]
    curve = dict(zip(token["concentration"]["top_fraction"], token["concentration"]["share"]))
    assert len(curve) == 100 and curve[1.0] == pytest.approx(1.0)
    assert curve[0.2] == pytest.approx(4 / 10) and curve[0.21] == pytest.approx(7 / 10)  # 1 token, then 2 of 5
    assert curve[0.4] == token["mass_share_top"]["0.4"] and curve[0.1] == token["mass_share_top"]["0.1"]
    assert summarize([[0.0, 0.0]])["token_dependency"]["concentration"]["share"] == [None] * 100


def test_top_share_ignores_float_noise():
    # 0.07 * 100 is 7.000000000000001 in floating point: the top 7% of 100 tokens is 7 tokens, not 8
    from vppo.reporting.analysis import top_count, top_shares

    assert top_count(0.07, 100) == 7 and top_count(0.07, 101) == 8 and top_count(0.001, 5) == 1
    tokens = np.asarray([10.0] * 7 + [30.0] + [0.0] * 92)
    assert top_shares(tokens, [0.07, 0.08]) == [pytest.approx(0.9), pytest.approx(1.0)]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("eval-data"), n_rows=2)


@pytest.mark.parametrize("estimator", ["k3", "kl"])
def test_analyze_tiny_model_writes_valid_finite_json(tiny_model_dir, eval_data, tmp_path, estimator, capsys):
    out = tmp_path / "analysis" / "tiny" / "vppo.json"
    code = vppo_main(["analyze", str(tiny_model_dir), "--data", str(eval_data), "--out", str(out), "--n-prompts", "3",
                      "--samples", "2", "--max-new-tokens", "12", "--benchmarks", "mathverse,geo3k",
                      "--model-label", "tiny", "--method-label", "vppo", "--estimator", estimator])
    assert code == 0
    assert "analyze: 100%" in capsys.readouterr().err  # a progress bar over the prompts
    data = load_analysis(out)  # the schema the figures read
    assert _finite(data)
    token, traj = data["token_dependency"], data["trajectory_mean_dependency"]
    assert [(t["benchmark"], t["row_id"]) for t in data["trajectories"][::2]] == [
        ("mathverse", "0"), ("geo3k", "0"), ("mathverse", "1")]  # rows are keyed by their index
    assert len(traj["values"]) == token["n_trajectories"] == 6
    assert token["n_tokens"] == sum(t["n_tokens"] for t in data["trajectories"]) > 6
    assert sum(token["histogram"]["counts"]) == token["n_tokens"]
    shares = token["concentration"]["share"]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    assert sum(token["log_histogram"]["counts"]) + token["log_histogram"]["below_min"] == token["n_tokens"]
    assert token["min"] >= 0 and token["max"] > 0  # the masked image changes the log-probs
    assert (data["model"], data["method"], data["estimator"], data["seed"]) == ("tiny", "vppo", estimator, 0)
    assert data["masking"] == {"params": {"p": 0.5, "patch_size": 14}, "strategy": "patch"}
    assert len(data["checkpoint_sha256"]) == 64 and set(data["data"]["sha256"]) == {"mathverse", "geo3k"}
    assert data["sampling"]["n"] == 2 and data["sampling"]["max_new_tokens"] == 12
    for part in ("by_role", "by_benchmark"):  # every token counted once, shares summing to 1
        assert sum(v["n_tokens"] for v in data[part].values()) == token["n_tokens"]
        assert sum(v["share_of_dependency"] for v in data[part].values()) == pytest.approx(1.0)
    assert set(data["by_benchmark"]) == {"mathverse", "geo3k"} and set(data["by_role"]) <= {"answer", "perception", "format"}
    assert json.loads(out.read_text()) == data


def test_breakdown_by_hand():
    from vppo.reporting.analysis import breakdown

    parts = breakdown([[1.0, 3.0], [4.0]], [["format", "answer"], ["answer"]])
    assert parts["answer"] == {"n_tokens": 2, "mean": 3.5, "share_of_dependency": 7 / 8, "share_of_tokens": 2 / 3}
    assert parts["format"]["share_of_dependency"] == 1 / 8
    with pytest.raises(ValueError):
        breakdown([[1.0]], [["a", "b"]])


def test_analyze_names_a_missing_checkpoint(tmp_path, eval_data, capsys):
    code = vppo_main(["analyze", str(tmp_path / "absent"), "--data", str(eval_data), "--out", str(tmp_path / "a.json")])
    assert code == 2 and "absent" in capsys.readouterr().err and not (tmp_path / "a.json").exists()
