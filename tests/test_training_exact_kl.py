"""The study's two dependency options in the real trainer, on the tiny model (CPU): the exact full-vocabulary KL
estimator (``--set dependency_estimator=kl``) and the masking strategy (``--set masking=grey|noise|blur``).

The KL the trainer computes from the final hidden states, a chunk of positions at a time, must equal
``token_vision_dependency(..., estimator="kl")`` on full logits of two independent forward passes; the old
log-probs must stay what TRL computes; every run records which estimator and masking it used."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

from vppo.algorithm import token_vision_dependency
from vppo.reward import Grade
from vppo.training.metrics import read_log
from vppo.training.recipes import load_recipe
from vppo.training.rewards import GradingReward
from vppo.training.runner import TrainRequest, build_trainer, cpu_threads, run_training

pytestmark = pytest.mark.slow


def steered_grade(response: str, answer: str) -> Grade:
    """About half of the responses to questions with answer 1 or 2 are right (by a hash), so groups survive."""
    return Grade(accuracy=float(answer in ("1", "2") and zlib.crc32(response.encode()) % 2 == 1), format=0.0,
                 extracted=None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vppo.data.train_data import prepare_train_data

    return prepare_train_data("synthetic", tmp_path_factory.mktemp("train-data") / "data", n_rows=16)


def _request(root: Path, model: Path, data: Path, method: str = "vppo", **kwargs) -> TrainRequest:
    return TrainRequest(model=model, data=data, recipe="smoke", method=method, work_dir=root / "work",
                        out=root / "out", **kwargs)


@pytest.fixture(scope="module")
def kl_rollout(tiny_model_dir, data_dir, tmp_path_factory):
    """One rollout of a kl + grey trainer in micro-batches of 2 rows, sampled at temperature 0.7 (the KL is taken
    at the sampling temperature, as the old log-probs), with KL chunks of 3 positions (so chunks cross rows)."""
    import vppo.training.exact_kl as exact_kl

    recipe = load_recipe("smoke", {"rollout_batch_prompts": 4, "update_batch_prompts": 2, "micro_batch_responses": 2,
                                   "tas_group_responses": 2, "temperature": 0.7, "dynamic_sampling_max_rounds": 8,
                                   "dependency_estimator": "kl", "masking": "grey"})
    root = tmp_path_factory.mktemp("inspect-kl")
    with cpu_threads(recipe), pytest.MonkeyPatch.context() as patch:
        trainer = build_trainer(_request(root, tiny_model_dir, data_dir), recipe,
                                reward=GradingReward(steered_grade)).trainer
        vocab = trainer.model.get_output_embeddings().weight.shape[0]
        patch.setattr(exact_kl, "KL_CHUNK_BYTES", 3 * exact_kl.kl_bytes_per_position(vocab, torch.float32))
        trainer.model.train()
        captured = {}
        layout = trainer._layout

        def spy_layout(batch):
            captured["batch"] = batch
            return layout(batch)

        trainer._layout = spy_layout
        rows = [row for row in trainer.train_dataset if row["answer"] in ("1", "2")][:4]
        sampled = trainer._sample_until_full
        trainer._sample_until_full = lambda examples: captured.setdefault("sampled", sampled(examples))
        micro = trainer._build_rollout([row for row in rows for _ in range(trainer.num_generations)])
        del trainer._layout, trainer._sample_until_full
        yield trainer, micro, captured["batch"], captured["sampled"][1]


def _scored(batch, pixel_values):
    from vppo.rollout import ScoredBatch

    inputs = {"input_ids": torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
              "attention_mask": torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
              "mm_token_type_ids": batch["mm_token_type_ids"], "pixel_values": pixel_values,
              "image_grid_thw": batch["image_grid_thw"]}
    return ScoredBatch(inputs, batch["completion_mask"], batch["completion_ids"])


def test_the_trainer_kl_is_the_full_vocabulary_kl_of_two_independent_passes(kl_rollout):
    from vppo.masking import mask_image
    from vppo.rollout import response_logits, response_logprobs
    from vppo.training.dependency import row_rng

    trainer, _, batch, row_examples = kl_rollout
    assert trainer.preset.dependency_estimator == "kl" and trainer.preset.masking == "grey"
    mask, temperature = batch["completion_mask"], trainer.temperature
    assert temperature == 0.7 and mask.shape[0] == 16 and trainer.args.per_device_train_batch_size == 2
    masked = [mask_image(image, "grey", row_rng(trainer.args.seed, trainer.state.global_step, 0, row))
              for row, example in enumerate(row_examples) for image in example["images"]]
    masked_pixels = trainer.processing_class.image_processor(images=masked, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        real = response_logits(trainer.model, _scored(batch, batch["pixel_values"])) / temperature
        blind = response_logits(trainer.model, _scored(batch, masked_pixels)) / temperature
        old = response_logprobs(trainer.model, _scored(batch, batch["pixel_values"]), temperature=temperature)
    expected = token_vision_dependency(real, blind, mask, estimator="kl")
    # float32 tolerance: log-probs near -log(V) lose ~5e-7 to rounding in each log-softmax, for the reference as
    # for the trainer (both sit that close to the float64 value; the tiny model's KLs are 1e-5 .. 1e-4)
    torch.testing.assert_close(batch["dependency"], expected, atol=2e-6, rtol=0)
    log_p, log_q = torch.log_softmax(real.double(), -1), torch.log_softmax(blind.double(), -1)
    exact = ((log_p.exp() * (log_p - log_q)).sum(-1) * mask).float()
    torch.testing.assert_close(batch["dependency"], exact, atol=1e-6, rtol=0)
    assert float(expected.sum()) > 0 and bool((batch["dependency"][~mask.bool()] == 0).all())
    # the old log-probs are still TRL's sampled-token pass with the real image
    torch.testing.assert_close(batch["old_per_token_logps"] * mask, old, atol=1e-5, rtol=1e-5)


def test_the_kl_dependency_feeds_tgf_and_tas_per_micro_batch(kl_rollout):
    trainer, micro, batch, _ = kl_rollout
    size = trainer.args.per_device_train_batch_size
    for k, piece in enumerate(micro):
        torch.testing.assert_close(piece["dependency"], batch["dependency"][k * size:(k + 1) * size])
        assert "tgf_mask" in piece and "tas_alpha" in piece


@pytest.fixture(scope="module")
def one_step_runs(tiny_model_dir, data_dir, tmp_path_factory):
    """One training step each: vppo with the exact KL, vppo with grey masking (set in the recipe), the vppo_grey
    preset (nothing set: the name alone), dapo; records the masking strategy each masked pass was asked for."""
    import vppo.training.trainer as trainer_module

    strategies = []
    original = trainer_module.mask_row_images

    def spy(images, strategy, *args, **kwargs):
        strategies.append(strategy)
        return original(images, strategy, *args, **kwargs)

    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "mask_row_images", spy)
        for name, method, overrides in (("kl", "vppo", {"dependency_estimator": "kl"}),
                                        ("grey", "vppo", {"masking": "grey"}), ("vppo_grey", "vppo_grey", {}),
                                        ("dapo", "dapo", {})):
            strategies.clear()
            root = tmp_path_factory.mktemp(name)
            out = run_training(_request(root, tiny_model_dir, data_dir, method, max_steps=1, overrides=overrides),
                               reward=GradingReward(steered_grade))
            runs[name] = {"log": read_log(out / "training_log.jsonl"), "strategies": sorted(set(strategies)),
                          "summary": json.loads((out / "train_summary.json").read_text())}
    return runs


@pytest.mark.parametrize("name, estimator, masking, recipe_set", [
    ("kl", "kl", "patch", {"dependency_estimator": "kl", "masking": None}),
    ("grey", "k3", "grey", {"dependency_estimator": None, "masking": "grey"}),
    ("vppo_grey", "k3", "grey", {"dependency_estimator": None, "masking": None}),  # the method name alone
])
def test_one_step_with_a_dependency_option_trains_and_records_it(one_step_runs, name, estimator, masking, recipe_set):
    run = one_step_runs[name]
    (line,) = run["log"]
    assert line["step"] == 1 and line["loss"] is not None and line["dependency_kept_mean"] is not None
    assert (line["dependency_estimator"], line["masking"]) == (estimator, masking)
    preset = run["summary"]["preset"]
    assert (preset["dependency_estimator"], preset["masking"]) == (estimator, masking)
    assert {key: run["summary"]["recipe"][key] for key in recipe_set} == recipe_set
    assert run["strategies"] == [masking]  # what the masked pass really ran, not only what was recorded


def test_a_method_without_the_masked_pass_records_no_dependency_options(one_step_runs):
    run = one_step_runs["dapo"]
    assert run["strategies"] == [] and run["log"][0]["dependency_estimator"] is None and run["log"][0]["masking"] is None


def test_work_dirs_from_before_the_options_still_resume_and_a_changed_option_does_not(tiny_model_dir, tmp_path):
    """A WORK_DIR claimed before the two recipe keys existed records no such keys: with them unset it is the same
    run; setting one is a different run (its checkpoints were trained with another dependency)."""
    from vppo.training.recipes import method_preset
    from vppo.training.runner import RUN_FILE, TrainError, _claim_work_dir

    request = _request(tmp_path, tiny_model_dir, tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    recipe = load_recipe("smoke")
    _claim_work_dir(work, request, recipe, method_preset("vppo", recipe), "sha", write=True)
    recorded = json.loads((work / RUN_FILE).read_text())
    assert "masking" not in recorded["recipe"] and "dependency_estimator" not in recorded["recipe"]
    _claim_work_dir(work, request, recipe, method_preset("vppo", recipe), "sha", write=False)
    grey = load_recipe("smoke", {"masking": "grey"})
    with pytest.raises(TrainError, match="refusing to resume: .*different method, recipe"):
        _claim_work_dir(work, request, grey, method_preset("vppo", grey), "sha", write=False)


def test_the_trainer_has_a_pass_for_every_estimator_of_the_algorithm():
    from vppo.algorithm import DEPENDENCY_ESTIMATORS
    from vppo.training.dependency import DEPENDENCY_PASSES

    assert sorted(DEPENDENCY_PASSES) == sorted(DEPENDENCY_ESTIMATORS)  # every recipe-valid name can train
