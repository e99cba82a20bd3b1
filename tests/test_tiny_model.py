"""The tiny offline Qwen2.5-VL behaves like the real architecture on CPU (issue 2)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vppo.modeling import CheckpointError, load_policy, load_processor, verify_checkpoint_dir
from vppo.rollout import encode_prompts, join_prompt_and_response, repeat_prompt_batch, response_logprobs, split_generation
from vppo.data.tiny_models import SPECIAL_TOKENS, build_tiny_qwen


def _picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir).eval(), load_processor(tiny_model_dir)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_qwen(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert _sha(again / name) == _sha(tiny_model_dir / name), name
    other = build_tiny_qwen(tmp_path / "other", seed=1)
    assert _sha(other / "model.safetensors") != _sha(tiny_model_dir / "model.safetensors")


def test_checkpoint_has_qwen_special_tokens_and_ids_match_config(policy):
    model, processor = policy
    vocab = processor.tokenizer.get_vocab()
    for token in SPECIAL_TOKENS:
        assert token in vocab, token
    assert model.config.image_token_id == vocab["<|image_pad|>"]
    assert model.config.vision_start_token_id == vocab["<|vision_start|>"]
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


def test_chat_template_places_image_tokens_in_chatml(policy):
    model, processor = policy
    batch = encode_prompts(processor, ["Count the <image> squares."], [[_picture()]])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("squares.<|im_end|>\n<|im_start|>assistant\n")
    assert "Count the <|vision_start|><|image_pad|>" in text
    n_pad = int((batch["input_ids"][0] == model.config.image_token_id).sum())
    assert n_pad == int(batch["image_grid_thw"][0].prod()) // 4  # 2x2 spatial merge
    assert int(batch["mm_token_type_ids"].sum()) == n_pad


def test_processor_saves_under_the_upstream_class_name(tiny_model_dir):
    import json

    assert json.loads((tiny_model_dir / "processor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"


def _sample(model, processor, n=8, max_new_tokens=24, seed=0):
    prompt = encode_prompts(processor, ["<image>How many red squares?"], [[_picture()]])
    torch.manual_seed(seed)
    out = model.generate(**prompt, max_new_tokens=max_new_tokens, num_return_sequences=n, do_sample=True,
                         output_logits=True, return_dict_in_generate=True)
    return prompt, out


def test_sampling_eight_responses_never_emits_vision_tokens(policy):
    model, processor = policy
    prompt, out = _sample(model, processor)
    response = out.sequences[:, prompt["input_ids"].shape[1]:]
    assert response.shape[0] == 8
    assert len({tuple(r.tolist()) for r in response}) == 8  # temperature 1.0 sampling: all distinct
    forbidden = {processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} - {
        processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id}
    assert not forbidden & set(response.flatten().tolist())


def _scored(model, processor, prompt, out):
    tok = processor.tokenizer
    ids, mask = split_generation(out.sequences, prompt["input_ids"].shape[1],
                                 [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)
    return join_prompt_and_response(repeat_prompt_batch(prompt, ids.shape[0]), ids, mask)


def test_per_token_logprobs_match_generation_logits(policy):
    model, processor = policy
    prompt, out = _sample(model, processor)
    batch = _scored(model, processor, prompt, out)
    with torch.no_grad():
        logp = response_logprobs(model, batch)
    gen_logits = torch.stack(out.logits, dim=1).float()  # [B, T, V] raw logits at each generation step
    gen_logp = torch.log_softmax(gen_logits, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    gen_logp = gen_logp * batch.response_mask
    assert batch.response_mask.sum() > 8
    torch.testing.assert_close(logp, gen_logp, atol=2e-4, rtol=1e-4)


def test_logprobs_depend_on_mrope_positions(policy):
    """Without mm_token_type_ids transformers 5 silently uses 1-D positions: the log-probs must differ."""
    model, processor = policy
    prompt, out = _sample(model, processor, n=2)
    batch = _scored(model, processor, prompt, out)
    with torch.no_grad():
        right = response_logprobs(model, batch)
        batch.inputs.pop("mm_token_type_ids")
        wrong = response_logprobs(model, batch)
    assert not torch.allclose(right, wrong)


def test_masked_image_pass_gives_finite_token_dependency(policy):
    from vppo.algorithm import token_vision_dependency
    from vppo.masking import mask_image

    model, processor = policy
    picture = _picture()
    prompt, out = _sample(model, processor)
    batch = _scored(model, processor, prompt, out)
    masked_image = mask_image(picture, "patch", rng=np.random.default_rng(0))
    masked_prompt = encode_prompts(processor, ["<image>How many red squares?"], [[masked_image]])
    assert torch.equal(masked_prompt["input_ids"], prompt["input_ids"])  # same tokens, other pixels
    masked_batch = join_prompt_and_response(repeat_prompt_batch(masked_prompt, 8), batch.response_ids, batch.response_mask)
    with torch.no_grad():
        logp = response_logprobs(model, batch)
        masked_logp = response_logprobs(model, masked_batch)
    dep = token_vision_dependency(logp, masked_logp, batch.response_mask)
    valid = batch.response_mask.bool()
    assert torch.isfinite(dep).all()
    assert (dep[~valid] == 0).all()
    assert (dep[valid] >= 0).all() and (dep[valid] > 0).any()
    assert dep[valid].unique().numel() > valid.sum() // 2  # token-specific, not a constant


def test_missing_checkpoint_pieces_are_named(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError, match="no such directory"):
        verify_checkpoint_dir(tmp_path / "absent")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json.*safetensors"):
        verify_checkpoint_dir(partial)


def test_cli_writes_a_loadable_checkpoint(tmp_path):
    from transformers import AutoModelForImageTextToText

    result = subprocess.run([sys.executable, "-m", "vppo", "make-tiny-model", str(tmp_path / "m"), "--seed", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
