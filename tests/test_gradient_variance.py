"""`vppo gradient-variance`: the variance statistics from a Gram matrix, the per-replicate gradients of each
weighting on the tiny model (TGF = the gradient of the kept tokens' loss, TAS with alpha = 1 = GRPO), the JSON it
writes, and its bad-input lines."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest
import torch

from vppo.algorithm import get_method, tgf_mask
from vppo.reward import Grade
from vppo.training.gradient_variance import (
    BASELINE,
    GradientVarianceRequest,
    covariance_trace,
    gram_matrix,
    measure,
    measurement_recipe,
    method_presets,
    replicate_gradients,
    rollout_sampler,
    sample_rollout,
    variance_statistics,
)
from vppo.training.rewards import GradingReward

#: TAS whose alpha is 1 for every response: beta_min = 1 makes beta_max = 1 whatever the scores
TAS_ALPHA_ONE = dataclasses.replace(get_method("vppo_tas_only"), name="tas_alpha_one", beta_min=1.0)
METHODS = ("vppo", "vppo_tgf_only", "vppo_tas_only", TAS_ALPHA_ONE)


def steered_grade(response: str, answer: str) -> Grade:
    """Right for about half the responses (a hash of the text), so every group has an advantage to follow."""
    return Grade(accuracy=float(zlib.crc32(response.encode()) % 2), format=0.0, extracted=None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vppo.data.train_data import prepare_train_data

    return prepare_train_data("synthetic", tmp_path_factory.mktemp("gv-data") / "data", n_rows=16)


def _request(model, data, **kwargs) -> GradientVarianceRequest:
    fields = {"recipe": "smoke", "methods": METHODS, "replicates": 3, "prompts": 2, "samples": 4,
              "max_new_tokens": 8, "bootstrap": 50}
    return GradientVarianceRequest(checkpoint=model, data=data, **{**fields, **kwargs})


# ------------------------------------------------------------------------------ statistics (no model)

def test_the_variance_statistics_match_a_direct_computation():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 50)) + 0.3
    noisy = base + rng.normal(size=(12, 50))
    vectors = np.concatenate([base, 2.0 * base, noisy])  # name-major: 12 replicates per weighting
    stats = variance_statistics(gram_matrix(torch.tensor(vectors, dtype=torch.float32), chunk=7),
                                ["grpo", "double", "noisy"], 12, bootstrap=200, seed=0)
    direct = lambda x: float(np.trace(np.cov(x, rowvar=False)))
    assert stats["grpo"]["variance"] == pytest.approx(direct(base), rel=1e-5)
    assert stats["noisy"]["variance"] == pytest.approx(direct(noisy), rel=1e-5)
    assert stats["grpo"]["variance_ratio"] == 1.0 and stats["grpo"]["stderr"] == 0.0
    # a gradient twice the baseline's: 4x the variance and the signal, same direction, exact in every resample
    assert stats["double"]["variance_ratio"] == pytest.approx(4.0, rel=1e-9)
    assert stats["double"]["stderr"] == pytest.approx(0.0, abs=1e-9)
    assert stats["double"]["cosine_to_baseline"] == pytest.approx(1.0, rel=1e-9)
    assert stats["double"]["signal_sq_norm"] == pytest.approx(4.0 * stats["grpo"]["signal_sq_norm"], rel=1e-9)
    mean = base.mean(0)
    assert stats["grpo"]["mean_grad_sq_norm"] == pytest.approx(float(mean @ mean), rel=1e-5)
    assert stats["grpo"]["signal_sq_norm"] == pytest.approx(float(mean @ mean) - direct(base) / 12, rel=1e-5)
    assert stats["noisy"]["stderr"] > 0 and stats["noisy"]["stderr_delta"] > 0
    # a resample with repeats is the sample covariance of the repeated vectors
    index = np.array([0, 0, 3, 5])
    picked = base[index]
    gram = picked @ picked.T
    assert covariance_trace(base @ base.T, index) == pytest.approx(
        float(np.trace(np.cov(picked, rowvar=False))), rel=1e-9) == pytest.approx(
        covariance_trace(gram, np.arange(4)), rel=1e-9)


def test_only_distinct_tgf_or_tas_methods_are_compared():
    from vppo.training.gradient_variance import GradientVarianceError

    assert [p.name for p in method_presets(["vppo", "vppo_k0.2"])] == ["vppo", "vppo_k0.2"]
    for bad, says in ((["dapo"], "neither TGF nor TAS"), (["vppo", "vppo"], "distinct"), (["vppo_x"], "unknown")):
        with pytest.raises(GradientVarianceError, match=says):
            method_presets(bad)


def test_an_update_smaller_than_a_tas_group_is_one_group(tmp_path):
    """The mini recipe's TAS groups are 16 responses; 2 prompts x 4 responses make one group of 8, 4 x 8 two."""
    small = _request(tmp_path, tmp_path, recipe="mini", prompts=2, samples=4)
    recipe, overrides = measurement_recipe(small)
    assert recipe.tas_group_responses == overrides["tas_group_responses"] == 8
    assert recipe.micro_batch_responses == 8 and recipe.updates_per_rollout == 1
    assert measurement_recipe(_request(tmp_path, tmp_path, recipe="mini", prompts=4, samples=8))[0].tas_group_responses == 16


# ------------------------------------------------------------------------------ gradients on the tiny model

@pytest.fixture(scope="module")
def rollout(tiny_model_dir, data_dir):
    """(trainer, one scored rollout, its per-weighting gradients) on the tiny model."""
    request = _request(tiny_model_dir, data_dir)
    with rollout_sampler(request, *measurement_recipe(request), GradingReward(steered_grade)) as run:
        batch = sample_rollout(run.trainer, 0, request.prompts * request.samples)
        record = replicate_gradients(run.trainer, batch, method_presets(METHODS))
        yield run.trainer, batch, record


@pytest.mark.slow
def test_tas_with_alpha_one_is_exactly_the_grpo_gradient(rollout):
    _, _, record = rollout
    assert torch.equal(record.gradients["tas_alpha_one"], record.gradients[BASELINE])
    assert float(record.gradients[BASELINE].abs().sum()) > 0
    assert not torch.equal(record.gradients["vppo_tas_only"], record.gradients[BASELINE])  # real alphas differ


@pytest.mark.slow
def test_the_tgf_gradient_is_the_gradient_of_the_kept_tokens_loss(rollout):
    """On-policy, the TGF loss is -sum_kept A * logp / n_valid: its gradient, by autograd on log-probs computed
    outside the trainer, is the measured vppo_tgf_only gradient."""
    from vppo.rollout import ScoredBatch, response_logprobs

    trainer, batch, record = rollout
    mask = batch["completion_mask"]
    inputs = {"input_ids": torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
              "attention_mask": torch.cat([batch["prompt_mask"], mask], 1),
              "mm_token_type_ids": batch["mm_token_type_ids"], "pixel_values": batch["pixel_values"],
              "image_grid_thw": batch["image_grid_thw"]}
    logp = response_logprobs(trainer.model, ScoredBatch(inputs, mask, batch["completion_ids"]))
    kept = tgf_mask(batch["dependency"], mask, 0.4)
    assert 0 < float(kept.sum()) < float(mask.sum())
    loss = -(batch["advantages"].unsqueeze(1) * logp * kept).sum() / mask.sum()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    expected = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
    torch.testing.assert_close(record.gradients["vppo_tgf_only"], expected, atol=1e-6, rtol=1e-4)
    assert record.kept_tokens["vppo_tgf_only"] == int(kept.sum()) and record.valid_tokens == int(mask.sum())


@pytest.mark.slow
def test_measure_writes_every_field_and_grpo_is_its_own_unit(tiny_model_dir, data_dir, tmp_path):
    result = measure(_request(tiny_model_dir, data_dir), reward=GradingReward(steered_grade), progress=False)
    assert result["method_order"] == [BASELINE, "vppo", "vppo_tgf_only", "vppo_tas_only", "tas_alpha_one"]
    for name, figures in result["methods"].items():
        assert {"variance", "variance_ratio", "stderr", "stderr_delta", "predicted_ratio", "k", "E_alpha_sq",
                "mean_grad_sq_norm", "signal_sq_norm", "signal_to_noise", "cosine_to_baseline"} <= set(figures), name
    grpo, one = result["methods"][BASELINE], result["methods"]["tas_alpha_one"]
    assert grpo["variance_ratio"] == 1.0 and grpo["predicted_ratio"] == 1.0 and grpo["k"] == 1.0
    # the same gradients as the baseline's (test above); the Gram's blocks round differently in the last bits
    assert one["variance_ratio"] == pytest.approx(1.0, abs=1e-12) and one["E_alpha_sq"] == 1.0
    assert 0.3 < result["methods"]["vppo_tgf_only"]["k"] < 0.6  # ceil(0.4 n) of short responses
    assert result["responses"] == 3 * 2 * 4 and result["parameters"] > 0
    for key in ("checkpoint", "checkpoint_sha256", "data", "sampling", "seed", "versions", "wall_time_s",
                "seconds_per_replicate", "recipe_overrides"):
        assert key in result, key
    assert result["sampling"]["max_new_tokens"] == 8 and result["data"]["rows"] == 16
    json.dumps(result, allow_nan=False)  # what write_json_atomic demands


# ------------------------------------------------------------------------------ command line

def test_a_missing_data_folder_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    from vppo.cli import main

    missing = tmp_path / "no-data"
    code = main(["gradient-variance", str(tiny_model_dir), "--data", str(missing), "--out", str(tmp_path / "gv.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("vppo gradient-variance: --data") and str(missing) in err
    assert not (tmp_path / "gv.json").exists()


def test_a_method_without_tgf_or_tas_is_one_line_and_exit_2(tiny_model_dir, data_dir, tmp_path, capsys):
    from vppo.cli import main

    code = main(["gradient-variance", str(tiny_model_dir), "--data", str(data_dir), "--out", str(tmp_path / "gv.json"),
                 "--methods", "vppo,dapo"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--methods dapo" in err
