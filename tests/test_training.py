"""End to end on the tiny model (CPU): every preset trains, VPPO presets (and only they) run the masked pass,
the trainer's loss is vppo.algorithm.policy_loss on independently computed tensors, filtered tokens get zero
gradient, dynamic sampling refills the batch, and a killed run resumes to bit-identical weights."""

from __future__ import annotations

import dataclasses
import json
import shutil
import weakref
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from vppo.algorithm import get_method, policy_loss, tas_scale, tgf_mask, token_vision_dependency, trajectory_scores
from vppo.reward import Grade
from vppo.training.metrics import LOG_KEYS, read_log
from vppo.training.rewards import GradingReward
from vppo.training.runner import TrainRequest, build_trainer, cpu_threads, run_training
from vppo.training.recipes import load_recipe

pytestmark = pytest.mark.slow
PRESETS = ("grpo", "dapo", "vppo", "vppo_tas_only", "vppo_tgf_only", "vppo_k0.2")


def steered_grade(response: str, answer: str) -> Grade:
    """Deterministic stand-in for the grader: questions with answer 1 or 2 are answered right about half the
    time (by a hash of the response), the others never, so online filtering drops about half the groups."""
    correct = answer in ("1", "2") and zlib.crc32(response.encode()) % 2 == 1
    return Grade(accuracy=float(correct), format=0.0, extracted=None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from vppo.data.train_data import prepare_train_data

    return prepare_train_data("synthetic", tmp_path_factory.mktemp("train-data") / "data", n_rows=16)


def _request(root: Path, model: Path, data: Path, method: str, **kwargs) -> TrainRequest:
    return TrainRequest(model=model, data=data, recipe="smoke", method=method, work_dir=root / "work",
                        out=root / "out", **kwargs)


@pytest.fixture(scope="module")
def preset_runs(tiny_model_dir, data_dir, tmp_path_factory):
    """Two steps of every preset; records how often each run masked images."""
    import vppo.training.trainer as trainer_module

    calls = {"n": 0}
    original = trainer_module.mask_row_images

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "mask_row_images", counting)
        for method in PRESETS:
            calls["n"] = 0
            root = tmp_path_factory.mktemp(method)
            out = run_training(_request(root, tiny_model_dir, data_dir, method, max_steps=2),
                               reward=GradingReward(steered_grade))
            runs[method] = {"out": out, "mask_calls": calls["n"], "log": read_log(out / "training_log.jsonl"),
                            "summary": json.loads((out / "train_summary.json").read_text())}
    return runs


@pytest.mark.parametrize("method", PRESETS)
def test_every_preset_trains_and_writes_the_out_dir(preset_runs, method):
    run = preset_runs[method]
    assert (run["out"] / "final" / "model.safetensors").is_file()
    assert run["summary"]["method"] == method and run["summary"]["steps"] == 2
    assert run["summary"]["final_format"] == "hf" and run["summary"]["preset"]["name"] == method
    assert [line["step"] for line in run["log"]] == [1, 2]
    for line in run["log"]:
        assert set(LOG_KEYS) <= set(line)
        assert line["loss"] is not None and line["time_generation_s"] > 0 and line["time_update_s"] > 0


@pytest.mark.parametrize("method", PRESETS)
def test_only_vppo_presets_run_the_masked_pass_and_log_vppo_metrics(preset_runs, method):
    preset, run = get_method(method), preset_runs[method]
    first = run["log"][0]
    assert (run["mask_calls"] > 0) == preset.needs_masked_pass
    assert (first["time_masked_pass_s"] > 0) == preset.needs_masked_pass
    assert (first["dependency_kept_mean"] is not None) == preset.needs_masked_pass
    provenance = ("k3", "patch") if preset.needs_masked_pass else (None, None)  # the official estimator and masking
    assert (first["dependency_estimator"], first["masking"]) == provenance
    assert (first["alpha_mean"] is not None) == preset.use_tas
    assert (first["dependency_dropped_mean"] is not None) == preset.use_tgf
    if preset.use_tgf:  # ceil(n * keep) of n tokens per response
        assert preset.keep_ratio <= first["kept_token_fraction"] < preset.keep_ratio + 0.1
        assert first["dependency_kept_mean"] >= first["dependency_dropped_mean"]
    else:
        assert first["kept_token_fraction"] == 1.0
    if preset.use_tas:
        assert first["alpha_min"] <= first["alpha_mean"] <= first["alpha_max"] and first["alpha_min"] >= 0.9 - 1e-6


def test_dynamic_sampling_is_on_for_dapo_and_off_for_grpo(preset_runs):
    dapo = preset_runs["dapo"]["log"]
    assert sum(line["filtered_groups"] for line in dapo) > 0 and max(line["sampling_rounds"] for line in dapo) > 1
    grpo = preset_runs["grpo"]["log"]
    assert all(line["filtered_groups"] == 0 and line["sampling_rounds"] == 1 for line in grpo)


def test_the_micro_batch_size_is_memory_only(tiny_model_dir, data_dir, tmp_path):
    """Same tas_group_responses, forward chunks of 4 or 8 responses: the same alpha (TAS's mu over each 4
    consecutive responses in both), the same loss and loss terms, and the same weights after the update."""
    runs = {}
    for micro in (4, 8):
        overrides = {"micro_batch_responses": micro, "tas_group_responses": 4}
        out = run_training(_request(tmp_path / str(micro), tiny_model_dir, data_dir, "vppo", max_steps=1,
                                    overrides=overrides), reward=GradingReward(steered_grade))
        runs[micro] = (read_log(out / "training_log.jsonl")[0], load_file(out / "final" / "model.safetensors"))
    (chunked, chunked_weights), (whole, whole_weights) = runs[4], runs[8]
    assert chunked["reward"] == whole["reward"]  # the same rollout
    for key in ("alpha_mean", "alpha_min", "alpha_max", "loss", "pg_loss", "entropy_penalty"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-7), key
    assert chunked["alpha_min"] < 1 < chunked["alpha_max"]
    # Measured on CPU: alpha_min/max equal, alpha_mean and loss 3e-8 apart (summation order), weights up to
    # 8.5e-7 apart: Adam's first step divides each gradient by its magnitude, so a rounding difference in a
    # near-zero gradient moves that weight by a visible fraction of lr (1e-4).
    for name, tensor in whole_weights.items():
        torch.testing.assert_close(chunked_weights[name], tensor, atol=5e-6, rtol=0, msg=name)


# ------------------------------------------------------------------ one trainer, inspected step by step

@pytest.fixture(scope="module")
def vppo_trainer(tiny_model_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    # TAS groups = micro-batches of 2: the loss must be the per-micro-batch formula of the official code
    recipe = load_recipe("smoke", {"rollout_batch_prompts": 4, "update_batch_prompts": 2, "micro_batch_responses": 2,
                                   "tas_group_responses": 2, "save_steps": 2, "dynamic_sampling_max_rounds": 8})
    with cpu_threads(recipe):
        run = build_trainer(_request(root, tiny_model_dir, data_dir, "vppo"), recipe, reward=GradingReward(steered_grade))
        run.trainer.model.train()
        yield run.trainer


def _examples(trainer, answers):
    """Dataset rows (repeated n times) whose answers are in ``answers``."""
    rows = [row for row in trainer.train_dataset if row["answer"] in answers][:4]
    return [row for row in rows for _ in range(trainer.num_generations)]


def test_dynamic_sampling_refills_the_batch_with_kept_groups(vppo_trainer):
    trainer = vppo_trainer
    trainer._metrics["train"].clear()
    # every group of the first round is answered wrong by all responses: all dropped, the batch must be refilled
    batch, row_examples = trainer._sample_until_full(_examples(trainer, ("3", "4")))
    metrics = trainer._metrics["train"]
    n = trainer.num_generations
    assert batch["completion_ids"].shape[0] == len(row_examples) == 4 * n
    assert metrics["filtered_groups"][0] >= 4 and metrics["sampling_rounds"][0] >= 2
    rewards = torch.tensor([steered_grade(trainer.processing_class.decode(ids[mask.bool()], skip_special_tokens=True),
                                          ex["answer"]).accuracy
                            for ids, mask, ex in zip(batch["completion_ids"], batch["completion_mask"], row_examples)])
    group_means = rewards.view(-1, n).mean(1)
    assert bool(((group_means > 0) & (group_means < 1)).all())  # only informative groups were kept
    assert float(batch["advantages"].abs().sum()) > 0


def test_the_round_cap_stops_the_run_with_a_clear_error(vppo_trainer):
    from vppo.training.trainer import SamplingCapError

    trainer = vppo_trainer
    grader, trainer.grading.grader = trainer.grading.grader, (lambda text, answer: Grade(0.0, 0.0, None))
    try:
        with pytest.raises(SamplingCapError, match=r"4 prompt group\(s\) short .* after 8 generation rounds "
                                                   r"\(dynamic_sampling_max_rounds=8\)"):
            trainer._sample_until_full(_examples(trainer, ("1", "2", "3", "4")))
    finally:
        trainer.grading.grader = grader


def test_refills_are_the_next_prompts_of_the_data_order(vppo_trainer):
    from vppo.training.batch import data_order

    trainer, n = vppo_trainer, vppo_trainer.num_generations
    rounds, generate = [], trainer._generate_and_score_completions

    def spy(examples):
        rounds.append([ex["id"] for ex in examples[::n]])
        return generate(examples)

    trainer._generate_and_score_completions = spy
    try:
        start = trainer.cursor.prompts_drawn
        first = trainer.next_examples(4 * n)
        trainer._sample_until_full(first)
    finally:
        del trainer._generate_and_score_completions
    size = len(trainer.train_dataset)
    drawn = data_order(size, trainer.args.seed, start, 4 * len(rounds))
    assert rounds == [[trainer.train_dataset[i]["id"] for i in drawn[4 * r:4 * r + 4]] for r in range(len(rounds))]
    assert trainer.cursor.prompts_drawn == start + 4 * len(rounds)
    # the stream walks through every row once per epoch, each epoch in its own seeded order
    epoch0, epoch1 = data_order(size, 0, 0, size), data_order(size, 0, size, size)
    assert sorted(epoch0) == sorted(epoch1) == list(range(size)) and epoch0 != epoch1


def test_generation_rounds_hold_no_pixels_of_earlier_rounds_or_rollouts(vppo_trainer):
    """While vLLM generates, the GPU holds no pixel_values of the previous rollout or of earlier refill rounds: at the
    start of every generation round each earlier round's full output and each micro-batch of the previous rollout
    is freed (weak references), the rows kept for the update and the stored micro-batches are in host memory, and
    a step gets its micro-batch on the model's device."""
    from vppo.training.batch import ROLLOUT_STORAGE

    trainer = vppo_trainer
    spg, generate = trainer.args.steps_per_generation, trainer._generate_and_score_completions
    earlier, alive_at_round = [], []

    def spy(examples):
        alive_at_round.append([name for name, ref in earlier if ref() is not None])
        out = generate(examples)
        earlier.append((f"round {len(alive_at_round)}", weakref.ref(out["pixel_values"])))
        return out

    trainer._generate_and_score_completions = spy
    rows = trainer.args.per_device_train_batch_size * spg
    trainer._buffered_inputs = None
    try:
        for rollout_index in range(2):
            trainer._step = rollout_index * spg  # a rollout boundary: _prepare_inputs builds the next rollout
            piece = trainer._prepare_inputs([None] * rows)
            assert piece["pixel_values"].device == trainer.accelerator.device
            del piece
            stored = trainer._buffered_inputs
            assert all(p["pixel_values"].device == ROLLOUT_STORAGE for p in stored)
            earlier += [(f"rollout {rollout_index} micro-batch {k}", weakref.ref(p["pixel_values"]))
                        for k, p in enumerate(stored)]
            del stored
    finally:
        del trainer._generate_and_score_completions
        trainer._step, trainer._buffered_inputs = 0, None
    assert len(alive_at_round) > 2  # two rollouts, at least one of them refilled (steered grader)
    assert alive_at_round == [[]] * len(alive_at_round)


@pytest.fixture(scope="module")
def rollout(vppo_trainer):
    """One rollout of the inspected trainer: the micro-batches, the batch before the mini-batch layout, and the
    dataset rows behind its rows."""
    trainer = vppo_trainer
    captured = {}
    layout, sample = trainer._layout, trainer._sample_until_full

    def spy_layout(batch):
        captured["batch"] = batch
        return layout(batch)

    def spy_sample(examples):
        captured["sampled"] = sample(examples)
        return captured["sampled"]

    trainer._layout, trainer._sample_until_full = spy_layout, spy_sample
    try:
        micro = trainer._build_rollout(_examples(trainer, ("1", "2")))
    finally:
        del trainer._layout, trainer._sample_until_full
    return micro, captured["batch"], captured["sampled"][1]


def test_micro_batches_hold_the_rollout_rows_in_their_order(vppo_trainer, rollout):
    micro, batch, _ = rollout
    size = batch["completion_ids"].shape[0] // len(micro)
    assert size == vppo_trainer.args.per_device_train_batch_size and len(micro) == vppo_trainer.args.steps_per_generation
    for k, piece in enumerate(micro):  # no shuffle: micro-batch k is rows k*size .. (k+1)*size - 1
        assert torch.equal(piece["completion_ids"], batch["completion_ids"][k * size:(k + 1) * size])
        assert torch.equal(piece["advantages"], batch["advantages"][k * size:(k + 1) * size])


def _independent_logps(model, batch, pixel_values):
    from vppo.rollout import ScoredBatch, response_logprobs

    inputs = {"input_ids": torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
              "attention_mask": torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
              "mm_token_type_ids": batch["mm_token_type_ids"], "pixel_values": pixel_values,
              "image_grid_thw": batch["image_grid_thw"]}
    with torch.no_grad():
        return response_logprobs(model, ScoredBatch(inputs, batch["completion_mask"], batch["completion_ids"]))


def test_dependency_is_k3_of_the_masked_and_real_image_passes(vppo_trainer, rollout):
    from vppo.masking import mask_image
    from vppo.training.dependency import row_rng

    trainer, (_, batch, row_examples) = vppo_trainer, rollout
    assert trainer.masked_pass_calls >= 1
    mask = batch["completion_mask"]
    old = _independent_logps(trainer.model, batch, batch["pixel_values"])
    torch.testing.assert_close(batch["old_per_token_logps"] * mask, old, atol=1e-5, rtol=1e-5)
    # masked images rebuilt from the documented seeding: one Generator per (seed, step, process, row)
    masked = [mask_image(image, "patch", row_rng(trainer.args.seed, trainer.state.global_step, 0, row))
              for row, example in enumerate(row_examples) for image in example["images"]]
    pixels = trainer.processing_class.image_processor(images=masked, return_tensors="pt")["pixel_values"]
    masked_logps = _independent_logps(trainer.model, batch, pixels)
    expected = token_vision_dependency(old, masked_logps, mask)
    torch.testing.assert_close(batch["dependency"], expected, atol=1e-4, rtol=1e-3)
    assert float(expected.sum()) > 0


def test_loss_is_policy_loss_on_independent_tensors(vppo_trainer, rollout):
    trainer, (micro, _, _) = vppo_trainer, rollout
    preset, ga = trainer.preset, trainer.args.gradient_accumulation_steps
    update = micro[:ga]
    masks = [m["completion_mask"] for m in update]
    width = max(m.shape[1] for m in masks)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    update_dep, update_mask = torch.cat([pad(m["dependency"]) for m in update]), torch.cat([pad(m) for m in masks])
    scores = trajectory_scores(update_dep, update_mask)[update_mask.bool().any(1)]  # all valid tokens (the code)
    denominator = float(update_mask.sum())
    for piece in update:
        mask, dep = piece["completion_mask"], piece["dependency"]
        logps = _independent_logps(trainer.model, piece, piece["pixel_values"])
        expected, _ = policy_loss(
            logps, piece["old_per_token_logps"], piece["advantages"], mask, token_mask=tgf_mask(dep, mask, 0.4),
            alpha=tas_scale(dep, mask, 0.9, minibatch_scores=scores), clip_low=0.2, clip_high=0.28, dual_clip=3.0,
            entropy_coef=0.06, loss_denominator=denominator)
        with torch.no_grad():
            actual = trainer._compute_loss(trainer.model, piece)
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
    assert preset.keep_ratio == 0.4 and trainer.entropy_penalty == 0.06


def test_filtered_tokens_receive_exactly_zero_gradient(vppo_trainer, rollout):
    trainer, (micro, _, _) = vppo_trainer, rollout
    piece = max(micro, key=lambda m: float(m["advantages"].abs().sum()))
    captured = {}
    original = trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        logps, entropies, aux = original(*args, **kwargs)
        logps.retain_grad()
        captured["logps"] = logps
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies, penalty = capture, trainer.entropy_penalty
    trainer.entropy_penalty = 0.0  # the entropy penalty covers every valid token by design (docs/protocol.md §4)
    try:
        trainer._compute_loss(trainer.model, piece).backward()
    finally:
        del trainer._get_per_token_logps_and_entropies
        trainer.entropy_penalty = penalty
        trainer.model.zero_grad()
    grad, mask = captured["logps"].grad, piece["completion_mask"].bool()
    kept = tgf_mask(piece["dependency"], piece["completion_mask"], 0.4).bool()
    assert bool((grad[mask & ~kept] == 0).all()) and bool((grad[~mask] == 0).all())
    assert float(grad[kept].abs().sum()) > 0


# ------------------------------------------------------------------ resume after a kill

class CrashAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated kill")


@pytest.fixture(scope="module")
def killed_at_step_3(tiny_model_dir, data_dir, tmp_path_factory):
    """(an uninterrupted 4-step vppo run's OUT, the work dir of the same run killed at step 3): tests resume copies."""
    root = tmp_path_factory.mktemp("killed")
    straight = run_training(_request(root / "a", tiny_model_dir, data_dir, "vppo"), reward=GradingReward(steered_grade))
    killed = _request(root / "b", tiny_model_dir, data_dir, "vppo")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_training(killed, callbacks=[CrashAfter(3)], reward=GradingReward(steered_grade))
    return straight, killed.work_dir


def _killed_copy(killed_at_step_3, root: Path, tiny_model_dir, data_dir) -> TrainRequest:
    request = _request(root, tiny_model_dir, data_dir, "vppo")
    shutil.copytree(killed_at_step_3[1], request.work_dir)
    return request


def test_a_killed_run_resumes_to_bit_identical_weights(killed_at_step_3, tiny_model_dir, data_dir, tmp_path):
    straight = killed_at_step_3[0]
    killed = _killed_copy(killed_at_step_3, tmp_path / "b", tiny_model_dir, data_dir)
    assert not killed.out.exists() and (killed.work_dir / "checkpoint-2").is_dir()
    # the checkpoint knows where the data stream stands: 2 rollouts of 2 prompts plus the refills
    state = json.loads((killed.work_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["DataCursor"]["args"]["prompts_drawn"] > 2 * 2
    resumed = run_training(killed, reward=GradingReward(steered_grade))
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((resumed / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    log_a, log_b = read_log(straight / "training_log.jsonl"), read_log(resumed / "training_log.jsonl")
    assert [line["step"] for line in log_b] == [1, 2, 3, 4]
    assert [line["loss"] for line in log_a] == [line["loss"] for line in log_b]
    assert any(line["pg_loss"] != 0 for line in log_a)  # the comparison covers real policy-gradient updates
    with pytest.raises(Exception, match="already holds a finished run"):
        run_training(killed)
    other = dataclasses.replace(killed, method="dapo", out=tmp_path / "b" / "other")
    with pytest.raises(Exception, match="trained with a different method"):
        run_training(other)


def test_an_out_of_memory_fix_resumes_but_a_maths_change_is_refused(killed_at_step_3, tiny_model_dir, data_dir,
                                                                    tmp_path):
    """Killed at step 3 with forward chunks of 4 responses, resumed with chunks of 8 and gradient checkpointing
    (keys outside the run's identity): it resumes from checkpoint-2 and ends where an uninterrupted run does, up
    to the float rounding of the other chunking. A learning-rate change (maths) is still refused."""
    straight = killed_at_step_3[0]
    killed = _killed_copy(killed_at_step_3, tmp_path / "b", tiny_model_dir, data_dir)
    learning_rate = dataclasses.replace(killed, overrides={"learning_rate": 2e-4})
    with pytest.raises(Exception, match="refusing to resume: .*different recipe"):
        run_training(learning_rate, reward=GradingReward(steered_grade))
    memory_fix = dataclasses.replace(killed, overrides={"micro_batch_responses": 8, "gradient_checkpointing": True,
                                                        "logging_steps": 2})
    resumed = run_training(memory_fix, reward=GradingReward(steered_grade))
    summary = json.loads((resumed / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    assert summary["recipe"]["micro_batch_responses"] == 8
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    # the same tolerance as test_the_micro_batch_size_is_memory_only: Adam magnifies rounding in tiny gradients
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, atol=5e-6, rtol=0, msg=name)
    assert any(not torch.equal(a[k], load_file(tiny_model_dir / "model.safetensors")[k]) for k in a)  # it trained


def test_a_finished_but_unpublished_run_is_published_without_another_step(tiny_model_dir, data_dir, tmp_path):
    """Killed while publishing, OUT deleted, or a Snakemake retry: the last checkpoint is at max_steps."""
    request = _request(tmp_path, tiny_model_dir, data_dir, "grpo")
    first = run_training(request, reward=GradingReward(steered_grade))
    weights = load_file(first / "final" / "model.safetensors")
    shutil.rmtree(first)
    again = run_training(request, reward=GradingReward(steered_grade))
    summary = json.loads((again / "train_summary.json").read_text())
    assert summary["steps"] == summary["max_steps"] == 4 and summary["resumed_from"].endswith("checkpoint-4")
    republished = load_file(again / "final" / "model.safetensors")
    assert weights.keys() == republished.keys() and all(torch.equal(weights[k], republished[k]) for k in weights)
    assert [line["step"] for line in read_log(again / "training_log.jsonl")] == [1, 2, 3, 4]
    assert not list((again / "final").glob("optimizer*")) and not (again / "final" / "trainer_state.json").exists()
    shutil.rmtree(again)
    with pytest.raises(Exception, match="already past max_steps=2"):
        run_training(dataclasses.replace(request, max_steps=2))


def test_new_data_at_the_same_path_does_not_resume_old_checkpoints(tiny_model_dir, tmp_path):
    from vppo.data.train_data import prepare_train_data

    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=16)
    request = _request(tmp_path, tiny_model_dir, data, "grpo")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_training(request, callbacks=[CrashAfter(1)], reward=GradingReward(steered_grade))
    shutil.rmtree(data)
    prepare_train_data("synthetic", data, n_rows=8)  # e.g. a changed n_rows in the config
    with pytest.raises(Exception, match="refusing to resume: .*different data_sha256"):
        run_training(request, reward=GradingReward(steered_grade))
    assert not request.out.exists()
