"""The optimizer as the official run: weight decay on every parameter (no bias/norm exclusion), and an update
whose gradient norm is not finite is skipped (weights and optimizer state untouched)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from vppo.reward import Grade
from vppo.training.rewards import GradingReward
from vppo.training.runner import TrainRequest, run_training

pytestmark = pytest.mark.slow


def _half(text: str, answer: str) -> Grade:
    return Grade(accuracy=float(len(text) % 2), format=0.0, extracted=None)


class InfGradientAtUpdate(TrainerCallback):
    """Makes one parameter's gradient infinite during update ``bad`` and records which updates moved the weights."""

    def __init__(self, bad: int):
        self.bad, self.trainer, self.hook, self.before = bad, None, None, None
        self.moved, self.adam_steps, self.decay_groups = {}, {}, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.bad:
            parameter = next(p for p in model.parameters() if p.requires_grad)
            self.hook = parameter.register_hook(lambda grad: torch.full_like(grad, math.inf))

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before = [p.detach().clone() for p in model.parameters()]
        if self.decay_groups is None:
            self.decay_groups = [(group["weight_decay"], len(group["params"])) for group in optimizer.param_groups]
            self.n_parameters = sum(1 for p in model.parameters() if p.requires_grad)

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.moved[state.global_step] = any(not torch.equal(a, p.detach()) for a, p in zip(self.before, model.parameters()))
        self.adam_steps[state.global_step] = max(int(s["step"]) for s in optimizer.state.values()) if optimizer.state else 0
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def test_weight_decay_on_all_parameters_and_a_non_finite_update_is_skipped(tiny_model_dir, tmp_path):
    from vppo.data.train_data import prepare_train_data

    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=8)
    spy = InfGradientAtUpdate(bad=1)
    request = TrainRequest(model=tiny_model_dir, data=data, recipe="smoke", method="grpo", work_dir=tmp_path / "work",
                           out=tmp_path / "out", max_steps=3)
    out = run_training(request, callbacks=[spy], reward=GradingReward(_half))
    # every parameter decayed with the recipe's 0.01 (transformers' no-decay group is left empty)
    assert sum(n for decay, n in spy.decay_groups if decay == 0.01) == spy.n_parameters
    assert all(n == 0 for decay, n in spy.decay_groups if decay != 0.01)
    assert spy.moved == {0: True, 1: False, 2: True}  # update 1 had an infinite gradient norm: skipped
    assert spy.adam_steps[1] == spy.adam_steps[0] and spy.adam_steps[2] == spy.adam_steps[0] + 1
    from vppo.training.metrics import read_log

    assert [line["skipped_updates"] for line in read_log(out / "training_log.jsonl")] == [0, 1, 0]
