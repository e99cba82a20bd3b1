"""Training with vLLM rollouts on vLLM's CPU build: the recipe's path (``use_vllm: true``, TRL's colocate mode,
an in-process ``LLM`` fed TRL's prompt token ids and PIL images, weights pushed into it before each rollout)
for the ``vppo`` method and every model family, with training images below and above the recipe's pixel bounds. vLLM must count the
same image tokens as the trainer's processor (it echoes the prompt ids it ran), the run must finish, and its
output must convert."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vppo.cli import main
from vppo.data.train_data import synthetic_example, write_layout
from vppo.training.metrics import read_log
from vppo.training.runner import TrainRequest, run_training

#: Raw training image sizes: below the recipe's min_pixels and above its max_pixels (both are resized first).
RAW_SIZES = [(20, 24), (300, 260), (40, 150), (500, 90)]


def recipe_bounds(family) -> dict:
    """The recipe's bounds for this run, inside the checkpoint processor's [4, 16] merged tokens so the resize
    decides (5 and 12 tokens: x 28^2 px for Qwen2.5-VL, x 32^2 for Qwen3-VL)."""
    return {"min_pixels": 5 * family.resize_factor ** 2, "max_pixels": 12 * family.resize_factor ** 2}


@pytest.fixture(scope="module")
def odd_size_data(tmp_path_factory):
    def examples():
        for i in range(8):
            row, image = synthetic_example(i, seed=0)
            yield row, [image.resize(RAW_SIZES[i % len(RAW_SIZES)], Image.NEAREST)]

    return write_layout(examples(), tmp_path_factory.mktemp("train") / "data", source="synthetic-odd-sizes")


def _embeddings(generation) -> tuple:
    """(trainer's, vLLM's) token embedding matrix at this rollout (embeddings are not repacked on CPU)."""
    engine_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    vllm_embed = next(p for n, p in engine_model.named_parameters() if n.endswith("embed_tokens.weight"))
    trainer_embed = next(p for n, p in generation.model.named_parameters() if n.endswith("embed_tokens.weight"))
    return trainer_embed.detach().clone(), vllm_embed.detach().clone()


@pytest.fixture(scope="module")
def vllm_run(family_model, odd_size_data, tmp_path_factory):
    """A 2-step vppo smoke run with vLLM rollouts; records what reached vLLM and what vLLM ran."""
    import gc

    from trl.generation.vllm_generation import VLLMGeneration

    family, model_dir = family_model

    calls = []
    original = VLLMGeneration.generate

    def recording(self, prompts, images, num_generations, profiler=None):
        # the engine call (inside the trainer's fixes), plus vLLM's own record of the prompt ids it ran
        prompt_ids, completion_ids, logprobs, token_ids = original(self, prompts, images, num_generations, profiler)
        calls.append({"sent": [list(p) for p in prompts], "ran": [list(p) for p in prompt_ids],
                      "embeddings": _embeddings(self),
                      "images": [list(ims or []) for ims in images or []],
                      "completions": [list(c) for c in completion_ids], "mode": self.mode})
        return prompt_ids, completion_ids, logprobs, token_ids

    root = tmp_path_factory.mktemp("vllm-train")
    request = TrainRequest(model=model_dir, data=odd_size_data, recipe="smoke", method="vppo",
                           work_dir=root / "work", out=root / "out", max_steps=2,
                           # vLLM's context (prompt + completion) must fit the tiny model's 4096 positions
                           overrides={"use_vllm": True, "vllm_mode": "colocate", "max_prompt_length": 1024,
                                      **recipe_bounds(family)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VLLMGeneration, "generate", recording)
        out = run_training(request)
    gc.collect()  # the run's engine shuts down now, not inside the next family's engine start
    return root, out, calls


def test_vllm_rollouts_run_the_trainers_prompt_ids(vllm_run, family_model):
    """vLLM gets one placeholder per image and expands it itself; what it ran has the image token count of the
    trainer's processor (the run's own guard, RolloutPromptMismatch, compared every prompt id with the trainer's)."""
    from vppo.modeling import load_processor

    _, _, calls = vllm_run
    family, model_dir = family_model
    bounds = recipe_bounds(family)
    assert calls and all(c["mode"] == "colocate" for c in calls)
    processor = load_processor(model_dir)
    image_token = processor.image_token_id
    merge = processor.image_processor.merge_size ** 2
    counts = set()
    for call in calls:
        for sent, ran, images in zip(call["sent"], call["ran"], call["images"]):
            assert sent.count(image_token) == len(images) == 1
            # every image reached vLLM already resized into the recipe's bounds
            assert bounds["min_pixels"] * 0.95 <= images[0].width * images[0].height <= bounds["max_pixels"]
            expected = int(processor.image_processor(images=images)["image_grid_thw"].prod()) // merge
            assert ran.count(image_token) == expected
            counts.add(expected)
        assert all(c for c in call["completions"])
    assert len(counts) >= 2  # the raw sizes lead to different image token counts


def test_every_rollout_runs_on_the_current_weights(vllm_run):
    _, _, calls = vllm_run
    distinct = []  # the policy's weights as seen by successive rollouts (rounds of one rollout share them)
    for call in calls:
        trainer_embed, vllm_embed = call["embeddings"]
        # the engine holds the weights in its own dtype (bf16 here, as TRL builds it from the checkpoint)
        assert torch.equal(trainer_embed.to(vllm_embed.dtype), vllm_embed)
        if not any(torch.equal(trainer_embed, seen) for seen in distinct):
            distinct.append(trainer_embed)
    assert len(distinct) >= 2  # the policy changed between rollouts and vLLM followed it


def test_vllm_rollout_run_finishes_and_converts(vllm_run, family_model):
    root, out, _ = vllm_run
    _, model_dir = family_model
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["recipe"]["use_vllm"] is True
    log = read_log(out / "training_log.jsonl")
    assert len([r for r in log if "reward" in r]) >= 1
    hf_dir = root / "hf"
    assert main(["convert", str(out), "--out", str(hf_dir), "--base", str(model_dir)]) == 0
    assert json.loads((hf_dir / "vppo_convert.json").read_text())
