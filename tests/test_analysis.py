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


# ------------------------------------------------------------- vppo analyze --variants (vppo.reporting.variants)

def test_variants_parse_with_the_published_pass_first_and_name_a_bad_item():
    from vppo.reporting.variants import parse_variants

    assert parse_variants("grey:k3,patch:kl") == [("patch", "k3"), ("grey", "k3"), ("patch", "kl")]
    assert parse_variants("blur:k3,patch:k3") == [("patch", "k3"), ("blur", "k3")]
    for bad, needle in (("black:k3", "'black:k3' is not <masking>:<estimator>"), ("grey", "'grey' is not"),
                        ("grey:k2", "'grey:k2' is not"), ("grey:k3,grey:k3", "'grey:k3' is named twice")):
        with pytest.raises(ValueError, match=needle):
            parse_variants(bad)


def test_selection_overlap_and_rank_correlation_by_hand():
    from vppo.reporting.variants import compare_to_reference

    reference = [[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    same = compare_to_reference(reference, reference, keep_ratio=0.4)
    assert same == {"kept_jaccard_mean": 1.0, "kept_by_both_share": 1.0, "spearman_pooled": 1.0,
                    "spearman_per_response_mean": 1.0, "n_responses_ranked": 2,
                    "kept_by_both_share_at_chance": pytest.approx((2 * 2 / 5 + 2 * 2 / 3) / 4)}
    # ceil(0.4 * 5) = 2 kept: {0, 1} against {0, 2} (Jaccard 1/3, 1 of 2 shared); ceil(0.4 * 3) = 2: {1, 2} against
    # {0, 1} (1/3, 1 of 2); the second response's order is reversed (rho -1)
    other = [[5.0, 1.0, 4.0, 3.0, 2.0], [3.0, 2.0, 1.0]]
    scores = compare_to_reference(reference, other, keep_ratio=0.4)
    assert scores["kept_jaccard_mean"] == pytest.approx(1 / 3) and scores["kept_by_both_share"] == pytest.approx(2 / 4)
    assert scores["spearman_per_response_mean"] == pytest.approx((0.4 - 1.0) / 2)  # first: 1 - 6 * 12 / (5 * 24)
    constant = compare_to_reference([[1.0, 1.0]], [[0.0, 2.0]], keep_ratio=0.5)  # ties: the earlier token kept
    assert constant["spearman_per_response_mean"] is None and constant["n_responses_ranked"] == 0
    assert constant["kept_jaccard_mean"] == 0.0
    with pytest.raises(ValueError, match="different responses"):
        compare_to_reference([[1.0, 2.0]], [[1.0]], keep_ratio=0.4)


def test_average_ranks_share_ties_as_scipy_does():
    import numpy as np
    from scipy.stats import rankdata

    from vppo.reporting.variants import average_ranks

    assert average_ranks(np.array([10.0, 20.0, 10.0])).tolist() == [1.5, 3.0, 1.5]
    values = np.random.default_rng(0).integers(0, 5, size=200).astype(float)
    assert average_ranks(values).tolist() == rankdata(values).tolist()


def test_control_to_heldout_is_the_ratio_of_per_token_means_by_hand():
    from vppo.reporting.variants import describe_variant

    described = describe_variant([[1.0, 3.0], [4.0]], [["mini_heldout", "mini_heldout"], ["mini_control"]])
    assert described["mean_by_benchmark"] == {"mini_heldout": 2.0, "mini_control": 4.0}
    assert described["control_to_heldout"] == pytest.approx(2.0) and described["median"] == pytest.approx(3.0)
    assert describe_variant([[1.0]], [["geo3k"]])["control_to_heldout"] is None


def test_variants_score_the_responses_vppo_analyze_samples(tiny_model_dir, eval_data, tmp_path):
    """Same seed, same responses as the single analysis; grey (deterministic) gives the single analysis's grey
    numbers; the published pass against itself agrees fully; the other passes score differently."""
    common = [str(tiny_model_dir), "--data", str(eval_data), "--n-prompts", "2", "--samples", "2",
              "--max-new-tokens", "10", "--benchmarks", "mathverse,geo3k"]
    assert vppo_main(["analyze", *common, "--out", str(tmp_path / "grey.json"), "--mask-strategy", "grey"]) == 0
    out = tmp_path / "tiny" / "vppo.variants.json"
    assert vppo_main(["analyze", *common, "--out", str(out), "--variants", "grey:k3,patch:kl"]) == 0
    single, data = json.loads((tmp_path / "grey.json").read_text()), json.loads(out.read_text())
    assert _finite(data) and data["schema"] == "vppo.analysis_variants/1" and data["reference"] == "patch:k3"
    assert list(data["variants"]) == ["grey:k3", "patch:k3", "patch:kl"] and data["keep_ratio"] == 0.4
    assert [(t["benchmark"], t["row_id"], t["sample"], t["n_tokens"]) for t in data["trajectories"]] == [
        (t["benchmark"], t["row_id"], i % 2, t["n_tokens"]) for i, t in enumerate(single["trajectories"])]
    assert [t["mean_dependency"]["grey:k3"] for t in data["trajectories"]] == pytest.approx(
        [t["mean_dependency"] for t in single["trajectories"]], rel=1e-5)
    assert data["variants"]["grey:k3"]["median"] == pytest.approx(single["token_dependency"]["quantiles"]["0.5"], rel=1e-5)
    published = data["variants"]["patch:k3"]
    assert published["vs_reference"]["kept_jaccard_mean"] == 1.0 and published["vs_reference"]["spearman_pooled"] == 1.0
    assert published["masking"] == {"strategy": "patch", "params": {"p": 0.5, "patch_size": 14}}
    for name in ("grey:k3", "patch:kl"):
        variant = data["variants"][name]
        assert variant["n_tokens"] == published["n_tokens"] > 0
        assert variant["vs_reference"]["spearman_pooled"] < 1.0 and 0 <= variant["vs_reference"]["kept_jaccard_mean"] <= 1
        assert [t["mean_dependency"][name] for t in data["trajectories"]] != pytest.approx(
            [t["mean_dependency"]["patch:k3"] for t in data["trajectories"]])
    assert data["variants"]["patch:kl"]["estimator"] == "kl" and data["seed"] == 0 and data["sampling"]["n"] == 2
    assert len(data["checkpoint_sha256"]) == 64 and set(data["data"]["sha256"]) == {"mathverse", "geo3k"}


def test_variants_refuse_a_single_pass_option(tiny_model_dir, eval_data, tmp_path, capsys):
    code = vppo_main(["analyze", str(tiny_model_dir), "--data", str(eval_data), "--out", str(tmp_path / "v.json"),
                      "--variants", "grey:k3", "--estimator", "kl"])
    assert code == 2 and "drop --estimator/--mask-strategy" in capsys.readouterr().err
    assert vppo_main(["analyze", str(tiny_model_dir), "--data", str(eval_data), "--out", str(tmp_path / "v.json"),
                      "--variants", "black:k3"]) == 2
    assert not (tmp_path / "v.json").exists()
