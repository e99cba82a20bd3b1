"""No rollout ever samples a vision special token: vLLM rollouts get logit bias -100 on them (as the official
rollout does for the image token), HF ``generate`` suppresses them, whatever the checkpoint's own
generation config says."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vppo.algorithm import get_method
from vppo.training.recipes import load_recipe
from vppo.training.runner import TrainRequest, build_config

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@pytest.fixture(scope="module")
def plain_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a generation config that suppresses nothing (as the released Qwen checkpoints)."""
    out = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "generation_config.json").read_text())
    config.pop("suppress_tokens", None)
    (out / "generation_config.json").write_text(json.dumps(config))
    return out


def _vision_ids(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return {tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}


def test_vllm_rollouts_bias_every_vision_token_by_minus_100(plain_model, tmp_path):
    recipe = load_recipe("smoke", {"use_vllm": True})
    request = TrainRequest(model=plain_model, data=tmp_path, recipe="smoke", method="vppo", work_dir=tmp_path / "w",
                           out=tmp_path / "o")
    config = build_config(request, recipe, get_method("vppo"))
    bias = config.generation_kwargs["logit_bias"]
    assert {token for token, value in bias.items() if value == -100} >= _vision_ids(plain_model)
    assert json.loads(json.dumps(bias))  # survives the JSON payload of TRL's vLLM server mode


@pytest.mark.slow
def test_hf_generate_never_samples_a_vision_token(plain_model, tmp_path):
    from vppo.data.train_data import prepare_train_data
    from vppo.training.rewards import GradingReward
    from vppo.training.runner import build_trainer, cpu_threads
    from vppo.reward import Grade

    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=4)
    recipe = load_recipe("smoke", {"max_completion_length": 24})
    request = TrainRequest(model=plain_model, data=data, recipe="smoke", method="grpo", work_dir=tmp_path / "w",
                           out=tmp_path / "o")
    with cpu_threads(recipe):
        trainer = build_trainer(request, recipe, reward=GradingReward(lambda text, answer: Grade(0.0, 0.0, None))).trainer
        vision = _vision_ids(plain_model)
        assert vision <= set(trainer.generation_config.suppress_tokens)
        with torch.no_grad():  # make the vision tokens the policy's favourites: only suppression keeps them out
            head = trainer.model.lm_head.weight
            head[sorted(vision)] = head.abs().max() * 50 * torch.sign(head.sum(0, keepdim=True))
        trainer.model.train()
        examples = [row for row in trainer.train_dataset for _ in range(trainer.num_generations)][:8]
        out = trainer._generate_and_score_completions(examples)
    completions = out["completion_ids"][out["completion_mask"].bool()]
    assert completions.numel() > 0 and not set(completions.tolist()) & vision
