"""Training-stage helpers without a training run: checkpoints on disk, mini-batch layout, metrics and the
JSONL log, the reward wrapper, masked-pass inputs, prompt lengths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vppo.modeling import CheckpointError
from vppo.reward import Grade
from vppo.training.batch import micro_batch_rows, update_rows
from vppo.training.checkpoints import is_complete_checkpoint, last_complete_checkpoint, weights_format
from vppo.modeling import masked_pixel_values
from vppo.training.dependency import mask_row_images
from vppo.training.metrics import LOG_KEYS, JsonlLogCallback, read_log, reduce_metric
from vppo.training.rewards import GradingReward, completion_text


# ------------------------------------------------------------------ checkpoints

def _hf_dir(path, shards=("model.safetensors",)):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    for shard in shards:
        (path / shard).write_bytes(b"x")
    return path


def test_weights_format_recognises_each_layout_and_names_missing_pieces(tmp_path):
    assert weights_format(_hf_dir(tmp_path / "hf")) == "hf"
    sharded = _hf_dir(tmp_path / "sharded", shards=("model-00001-of-00002.safetensors",))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing model-00002-of-00002.safetensors"):
        weights_format(sharded)
    ds = tmp_path / "ds"
    (ds / "global_step4").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="missing latest"):
        weights_format(ds)
    (ds / "latest").write_text("global_step4")
    with pytest.raises(CheckpointError, match="model_states"):
        weights_format(ds)
    (ds / "global_step4" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    assert weights_format(ds) == "deepspeed"
    fsdp = tmp_path / "fsdp" / "pytorch_model_fsdp_0"
    fsdp.mkdir(parents=True)
    (fsdp / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=".metadata"):
        weights_format(fsdp.parent)
    (fsdp / ".metadata").write_bytes(b"x")
    assert weights_format(fsdp.parent) == "fsdp_sharded"
    with pytest.raises(CheckpointError, match="no model weights"):
        weights_format(tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        weights_format(tmp_path / "absent")


def test_last_complete_checkpoint_skips_partial_ones(tmp_path):
    assert last_complete_checkpoint(tmp_path) is None
    for step in (2, 4, 6):
        _hf_dir(tmp_path / f"checkpoint-{step}")
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    # checkpoint-6 was being written when the job died: no trainer_state.json yet
    assert not is_complete_checkpoint(tmp_path / "checkpoint-6")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-4" / "model.safetensors").unlink()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


# ------------------------------------------------------------------ mini-batch layout

def test_micro_batches_and_updates_follow_trl_step_order():
    micro = micro_batch_rows([5, 3, 0, 1, 4, 2, 7, 6], 4)
    assert micro == [[5, 3], [0, 1], [4, 2], [7, 6]]
    assert update_rows(micro, 2) == [[5, 3, 0, 1], [4, 2, 7, 6]]
    with pytest.raises(ValueError, match="equal micro-batches"):
        micro_batch_rows(list(range(6)), 4)
    with pytest.raises(ValueError, match="whole updates"):
        update_rows(micro, 3)


# ------------------------------------------------------------------ metrics and the JSONL log

def test_reduce_metric_uses_min_max_sum_where_a_mean_would_lie():
    assert reduce_metric("alpha_min", [0.95, 0.9, float("nan")]) == 0.9
    assert reduce_metric("alpha_max", [1.1, 1.3]) == 1.3
    assert reduce_metric("filtered_groups", [2.0, 3.0]) == 5.0
    assert reduce_metric("time_generation_s", [1.0, 0.5]) == 1.5
    assert reduce_metric("accuracy", [0.25, 0.75]) == 0.5
    assert reduce_metric("alpha_mean", [float("nan"), None]) is None


class _State:
    def __init__(self, step):
        self.global_step, self.is_world_process_zero = step, True


def test_jsonl_log_has_every_contract_key_and_is_cut_back_on_resume(tmp_path):
    path = tmp_path / "training_log.jsonl"
    callback = JsonlLogCallback(path)
    callback.on_train_begin(None, _State(0), None)
    for step in (1, 2, 3):
        callback.on_log(None, _State(step), None, logs={"loss": 0.5, "reward": 0.25, "alpha_mean": float("nan")})
    callback.on_log(None, _State(3), None, logs={"train_runtime": 1.0})  # the end-of-run summary is not a step
    lines = read_log(path)
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert set(LOG_KEYS) <= set(lines[0]) and lines[0]["alpha_mean"] is None and lines[0]["dependency_kept_mean"] is None
    with path.open("a") as handle:
        handle.write('{"step": 4, "lo')  # a kill in the middle of a write
    JsonlLogCallback(path, resumed_step=2).on_train_begin(None, _State(2), None)
    assert [line["step"] for line in read_log(path)] == [1, 2]


def _loss_batch(seed: int, masked_pass: bool):
    """One micro-batch's loss inputs (3 rows x 5 tokens, the last row all padding), as _compute_loss passes them."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(3, 5, generator=g) > 0.3).float()
    mask[2] = 0
    dependency = torch.rand(3, 5, generator=g) if masked_pass else None
    token_mask = (torch.rand(3, 5, generator=g) > 0.4).float() if masked_pass else None
    alpha = torch.rand(3, generator=g) + 0.5 if masked_pass else None
    entropies = torch.rand(3, 5, generator=g)
    stats = {key: float(torch.rand(1, generator=g)) for key in
             ("pg_loss", "entropy_loss", "clipfrac_low", "clipfrac_high", "clipfrac_dual", "ppo_kl")}
    return stats, mask, dependency, token_mask, alpha, entropies


class _TwoRanks:
    """accelerator.gather of this rank's values with those another rank gathered before (``peers``)."""

    def __init__(self, peers=()):
        self.peers, self.local = list(peers), None

    def gather(self, local):
        self.local = local
        return torch.cat([local, *self.peers])


def _record(batch, peers=()):
    import collections
    import types

    from vppo.training.trainer import VPPOTrainer

    trainer = types.SimpleNamespace(accelerator=_TwoRanks(peers), args=types.SimpleNamespace(gradient_accumulation_steps=4),
                                    _metrics={"train": collections.defaultdict(list)}, _tokens_since_log=0.0)
    VPPOTrainer._record_loss_metrics(trainer, *batch)
    return trainer


#: what the trainer logged for _loss_batch(1) gathered with _loss_batch(2) on a second rank, computed by the
#: trainer before its metrics were named (ea07d9a: positional columns): naming them must not change a value
LOGGED_BEFORE_NAMING = {
    True: {"kept_token_fraction": 0.5625, "entropy": 0.5422393083572388, "pg_loss": 3.847769260406494,
           "entropy_penalty": 2.3276844024658203, "clipfrac_low": 0.45491981506347656,
           "clipfrac_high": 0.5780954957008362, "clipfrac_dual": 0.3020014762878418, "ppo_kl": 0.23057019710540771,
           "dependency_kept_mean": 0.4234718746609158, "dependency_dropped_mean": 0.5535012313297817,
           "alpha_mean": 1.1122509241104126, "alpha_min": 0.7345899343490601, "alpha_max": 1.257007360458374},
    False: {"kept_token_fraction": 1.0, "entropy": 0.4803597331047058, "pg_loss": 1.3709594011306763,
            "entropy_penalty": 2.2995731830596924, "clipfrac_low": 0.7238521575927734,
            "clipfrac_high": 0.4367520809173584, "clipfrac_dual": 0.27461346983909607,
            "ppo_kl": 0.26481953263282776},
}


@pytest.mark.parametrize("masked_pass", [True, False], ids=["vppo", "dapo"])
def test_loss_metrics_of_two_ranks_are_the_values_logged_before_they_were_named(masked_pass):
    peer = _record(_loss_batch(2, masked_pass)).accelerator.local  # what the second rank contributes
    trainer = _record(_loss_batch(1, masked_pass), peers=[peer])
    logged = {key: values for key, values in trainer._metrics["train"].items()}
    assert logged == {key: [pytest.approx(value, rel=1e-6)] for key, value in LOGGED_BEFORE_NAMING[masked_pass].items()}
    assert trainer._tokens_since_log == 16.0  # valid tokens of both ranks


# ------------------------------------------------------------------ reward wrapper

def test_grading_reward_returns_accuracy_and_keeps_grades_in_row_order():
    reward = GradingReward()
    completions = [[{"role": "assistant", "content": "<think>two</think> \\boxed{2}"}],
                   [{"role": "assistant", "content": "\\boxed{3}"}], "no box at all"]
    assert reward(prompts=[None] * 3, completions=completions, answer=["2", "2", "2"], id=["a", "b", "c"]) == [1.0, 0.0, 0.0]
    grades = reward.take()
    assert [g.format for g in grades] == [1.0, 0.0, 0.0] and grades[1].extracted == "3"
    assert reward.take() == []
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) == "ab"
    steered = GradingReward(lambda text, answer: Grade(float(text == answer), 0.0, None))
    assert steered(prompts=[None], completions=["4"], answer=["4"]) == [1.0]


# ------------------------------------------------------------------ masked-pass inputs

def _picture(seed, size=(70, 56)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, size=(size[1], size[0], 3), dtype=np.uint8))


def test_row_masks_are_seeded_per_step_and_row_and_keep_the_tiling(tiny_model_dir):
    from vppo.modeling import load_processor

    rows = [[_picture(0)], [_picture(1), _picture(2)]]
    first = mask_row_images(rows, "patch", seed=0, step=3)
    again = mask_row_images(rows, "patch", seed=0, step=3)
    other_step = mask_row_images(rows, "patch", seed=0, step=4)
    as_arrays = lambda masked: [np.asarray(im) for images in masked for im in images]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(as_arrays(first), as_arrays(again)))
    assert not all(np.array_equal(a, b) for a, b in zip(as_arrays(first), as_arrays(other_step)))
    black = [(a == 0).all(-1).mean() for a in as_arrays(first)]
    assert all(0.2 < fraction < 0.8 for fraction in black)  # about half of the 14 px patches blackened

    processor = load_processor(tiny_model_dir)
    flat = [im for images in rows for im in images]
    grid = processor.image_processor(images=flat, return_tensors="pt")["image_grid_thw"]
    pixels = masked_pixel_values(processor.image_processor, first, grid)
    original = processor.image_processor(images=flat, return_tensors="pt")["pixel_values"]
    assert pixels.shape == original.shape and not torch.equal(pixels, original)
    with pytest.raises(ValueError, match="tile as"):
        masked_pixel_values(processor.image_processor, [[_picture(0, size=(140, 140))], first[1]], grid)


def test_prompt_token_counts_match_the_processor(tiny_model_dir, tmp_path):
    from vppo.data.train_data import load_train_dataset, prepare_train_data
    from vppo.modeling import load_processor
    from vppo.rollout import content_text, encode_prompts
    from vppo.training.runner import prompt_token_counts

    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=3)
    dataset = load_train_dataset(data)
    processor = load_processor(tiny_model_dir)
    counts = prompt_token_counts(dataset, processor)
    for row, count in zip(dataset, counts):
        encoded = encode_prompts(processor, [content_text(row["prompt"][-1]["content"])], [row["images"]])
        assert count == int(encoded["attention_mask"].sum())


def test_a_bad_hub_row_leaves_no_partial_training_data(tmp_path):
    from vppo.data.train_data import TrainDataError, convert_dataset

    good = {"problem": "<image>How many?", "answer": "2", "images": [Image.new("RGB", (28, 28))]}
    rows = [good, {**good, "answer": ""}]
    with pytest.raises(TrainDataError, match="row 1: field 'answer'"):
        convert_dataset(rows, tmp_path / "train", source="test")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary sibling
    keep = tmp_path / "busy"
    keep.mkdir()
    (keep / "notes.txt").write_text("someone's work")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_dataset([good], keep, source="test")
    assert (keep / "notes.txt").read_text() == "someone's work"


def test_a_checkpoint_missing_a_weight_is_refused_before_training(tiny_model_dir, tmp_path):
    """transformers initialises a missing weight randomly, prints a load report and goes on; the run must stop."""
    import shutil
    from types import SimpleNamespace

    from safetensors.torch import load_file, save_file

    from vppo.training.runner import TrainError, load_policy_checked

    args = SimpleNamespace(model_init_kwargs={"dtype": "float32"},
                           distributed_state=SimpleNamespace(distributed_type="NO"))
    model = load_policy_checked(tiny_model_dir, args)  # a whole checkpoint loads
    assert args.model_init_kwargs is None and next(model.parameters()).dtype == torch.float32
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    args = SimpleNamespace(model_init_kwargs={"dtype": "float32"},
                           distributed_state=SimpleNamespace(distributed_type="NO"))
    with pytest.raises(TrainError, match=r"missing keys: model\.language_model\.layers\.0\.mlp\.down_proj\.weight"):
        load_policy_checked(broken, args)


def test_a_refused_checkpoint_does_not_claim_the_work_dir(tiny_model_dir, tmp_path):
    """Replaced at the same path by a whole checkpoint, the run must still start in that work dir."""
    import shutil

    from safetensors.torch import load_file, save_file

    from vppo.data.train_data import synthetic_example, write_layout
    from vppo.training.runner import RUN_FILE, TrainError, TrainRequest, run_training

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    data = write_layout(((synthetic_example(i, seed=0)[0], [synthetic_example(i, seed=0)[1]]) for i in range(4)),
                        tmp_path / "data", source="synthetic")
    request = TrainRequest(model=broken, data=data, recipe="smoke", method="grpo", work_dir=tmp_path / "work",
                           out=tmp_path / "out", max_steps=1)
    with pytest.raises(TrainError, match="does not load cleanly"):
        run_training(request)
    assert not (tmp_path / "work" / RUN_FILE).exists() and not (tmp_path / "out").exists()
