"""ZeRO-3 on 2 CPU processes (transformers generation, one update per rollout, a checkpoint every step): an update
whose gradient is not finite on one rank is skipped whole, on every rank, and the next one is applied; a job killed
right after a save resumes from that save and ends bit-identical to one that was never killed.

Faults come from tests/doubles/train_with_faults.py, which runs ``vppo train`` under the launcher's own
``accelerate launch`` command.
"""

from __future__ import annotations

import pytest
import torch

from distributed import hf_weights, max_difference, run_launch, synthetic_train_data, train_args
from vppo.training.metrics import read_log

#: one update per rollout and a checkpoint after each (the fault tests read every step's weights)
RECIPE = ["--max-steps", "2", "--set", "use_vllm=false", "--set", "rollout_batch_prompts=2", "--set", "save_steps=1"]
INF_AT_FIRST_UPDATE = ["--inf-loss-at-step", "0", "--inf-loss-rank", "1"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    return synthetic_train_data(tmp_path_factory.mktemp("zero3-ckpt") / "data", rows=16, seed=1)


@pytest.fixture(scope="module")
def uninterrupted(vllm_model_dir, train_data, tmp_path_factory):
    """2 steps; rank 1's gradient is inf/nan in the first update."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run_launch(train_args(vllm_model_dir, train_data, root, extra=RECIPE), root / "launch.log",
               faults=INF_AT_FIRST_UPDATE)
    return root


def test_a_non_finite_gradient_on_one_rank_skips_that_update_whole_and_only_it(uninterrupted, vllm_model_dir):
    base = hf_weights(vllm_model_dir)
    after_first = hf_weights(uninterrupted / "work" / "checkpoint-1")
    after_second = hf_weights(uninterrupted / "out" / "final")
    assert max_difference(after_first, base) == 0.0  # skipped on both ranks: nothing moved
    assert max_difference(after_second, after_first) > 1e-5  # the next update is applied
    assert all(torch.isfinite(w).all() for w in after_second.values())
    log = [row for row in read_log(uninterrupted / "out" / "training_log.jsonl") if "loss" in row]
    assert [row["skipped_updates"] for row in log] == [1.0, 0.0]


def test_a_job_killed_after_a_save_resumes_bit_identically(uninterrupted, vllm_model_dir, train_data, tmp_path):
    args = train_args(vllm_model_dir, train_data, tmp_path, extra=RECIPE)
    run_launch(args, tmp_path / "killed.log", faults=[*INF_AT_FIRST_UPDATE, "--exit-after-save-at-step", "1"],
               expect=1)
    assert (tmp_path / "work" / "checkpoint-1" / "trainer_state.json").is_file() and not (tmp_path / "out").exists()
    run_launch(args, tmp_path / "resumed.log", faults=INF_AT_FIRST_UPDATE)
    assert "resuming from" in (tmp_path / "resumed.log").read_text()
    resumed, straight = hf_weights(tmp_path / "out" / "final"), hf_weights(uninterrupted / "out" / "final")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
