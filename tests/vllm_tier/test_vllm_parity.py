"""vLLM and the transformers forward pass see the same model input: same prompt token ids (chat template, image
token count) and the same per-token log-probs (vision features, mrope positions) for fixed responses, with
images below, inside and above the processor's pixel bounds. Scored in float32 on vLLM's CPU build, for every
model family (Qwen2.5-VL and Qwen3-VL: their resize factors, vision towers and position schemes differ).

vLLM preprocesses images with transformers' torchvision image processor; the harness's transformers paths
(trainer, ``vppo_hf``) use the PIL one (``vppo.modeling``), whose resized pixels differ by about one grey
level (0.015 after normalisation). So the tight comparison feeds transformers the torchvision processor's
pixels; the harness's own PIL path is compared with a looser bound that this rounding explains.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vppo.modeling import load_policy, load_processor
from vppo.rollout import chat_prompt

#: Float32 on both sides, same pixels: what remains is summation order in attention and matmuls.
TOLERANCE = 1e-3
#: Same, with transformers fed the PIL processor's pixels (at most one grey level of resampling rounding apart,
#: checked): how far that moves the log-probs is the model's sensitivity. The tiny Qwen3-VL (learned position
#: embeddings, DeepStack features into the first decoder layer) moves up to 0.10 where the tiny Qwen2.5-VL moves
#: under 0.01 for the same images (measured with vLLM 0.31's transformers 5.17).
PIL_TOLERANCE = {"qwen2.5-vl": 3e-2, "qwen3-vl": 0.15}
#: (width, height) against the tiny processor's bounds [4, 16] merged tokens (x 28^2 px for Qwen2.5-VL, x 32^2 for
#: Qwen3-VL): below, inside, above, elongated.
IMAGE_SIZES = [(20, 24), (70, 56), (300, 200), (40, 150), (500, 90)]
RESPONSES = ["<think> count squares </think> \\boxed{3}", "<think> option </think> \\boxed{B}"]


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def _cases(processor):
    cases = []
    for i, size in enumerate(IMAGE_SIZES):
        prompt = chat_prompt(processor, f"<image>How many red squares are in the image? (case {i})", 1)
        cases.append((prompt, RESPONSES[i % len(RESPONSES)], _image(size, i)))
    return cases


def _grey_level_gap(processor, other, image) -> float:
    """Largest difference between two image processors' pixels for ``image``, in grey levels (0-255 scale)."""
    a, b = (p.image_processor(images=[image], return_tensors="pt")["pixel_values"] for p in (processor, other))
    std = torch.tensor(processor.image_processor.image_std)
    per_channel = (a - b).abs().reshape(a.shape[0], len(std), -1)  # rows: channel, then temporal x patch pixels
    return float((per_channel * std[None, :, None] * 255).max())


def _hf_scores(model, processor, prompt: str, response: str, image, positions_3d: bool = True):
    """(input ids, log-prob of every token given the ones before it) from one transformers forward pass."""
    inputs = dict(processor(text=[prompt + response], images=[image], return_tensors="pt",
                            return_mm_token_type_ids=True))
    if not positions_3d:  # what a caller that forgets mm_token_type_ids gets: 1-D positions, silently
        inputs.pop("mm_token_type_ids")
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits.float()
    ids = inputs["input_ids"][0]
    logp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
    return ids.tolist(), logp


@pytest.fixture(scope="module")
def vllm_scores(family_model):
    import gc

    from vllm import LLM, SamplingParams

    _, model_dir = family_model
    processor = load_processor(model_dir)
    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=1024, seed=0,
              limit_mm_per_prompt={"image": 1})
    try:
        cases = _cases(processor)
        outputs = llm.generate([{"prompt": p + r, "multi_modal_data": {"image": [im]}} for p, r, im in cases],
                               SamplingParams(max_tokens=1, prompt_logprobs=0, seed=0), use_tqdm=False)
    finally:
        del llm
        gc.collect()  # shut down now, not inside the next family's engine start
    scored = []
    for output in outputs:
        ids = list(output.prompt_token_ids)
        # prompt_logprobs[i] holds the log-prob of token i given tokens < i (None for the first token)
        logp = torch.tensor([entry[ids[i]].logprob for i, entry in enumerate(output.prompt_logprobs) if i > 0])
        scored.append((ids, logp))
    return processor, cases, scored


def test_vllm_and_transformers_build_the_same_prompt_ids(vllm_scores):
    processor, cases, scored = vllm_scores
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = set()
    for (prompt, response, image), (vllm_ids, _) in zip(cases, scored):
        hf_ids = processor(text=[prompt + response], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        assert vllm_ids == hf_ids, f"image {image.size}: vLLM and transformers tokenise differently"
        counts.add(hf_ids.count(image_token))
    # the sizes really give different image token counts, clamped to the bounds (4 and 16 merged tokens)
    assert len(counts) >= 4 and min(counts) == 4 and max(counts) <= 16


def test_vllm_prompt_logprobs_equal_the_transformers_forward_pass(family_model, vllm_scores):
    from transformers import AutoProcessor

    family, model_dir = family_model
    pil_processor, cases, scored = vllm_scores
    processor = AutoProcessor.from_pretrained(model_dir)  # the torchvision image processor, as vLLM's
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert processor.image_processor.patch_size == family.patch_size
    model = load_policy(model_dir, dtype=torch.float32).eval()
    for (prompt, response, image), (vllm_ids, vllm_logp) in zip(cases, scored):
        hf_ids, hf_logp = _hf_scores(model, processor, prompt, response, image)
        n_response = len(hf_ids) - len(processor(text=[prompt], images=[image])["input_ids"][0])
        assert n_response > 0
        # every position: the image tokens and the text after them depend on vision features and mrope positions
        diff = (vllm_logp - hf_logp).abs().max().item()
        assert diff < TOLERANCE, f"image {image.size}: max |dlogp| {diff:.2e}"
        assert _grey_level_gap(processor, pil_processor, image) <= 1.0 + 1e-3  # resampling rounding only
        _, pil_logp = _hf_scores(model, pil_processor, prompt, response, image)
        pil_diff = (vllm_logp - pil_logp).abs().max().item()
        assert pil_diff < PIL_TOLERANCE[family.key], f"image {image.size}: PIL path max |dlogp| {pil_diff:.2e}"
        # The comparison can fail: 1-D positions (mrope ignored) move the response's log-probs past both bounds.
        # (Qwen3-VL's transformers code refuses such an input outright instead.)
        try:
            _, wrong = _hf_scores(model, processor, prompt, response, image, positions_3d=False)
        except ValueError as exc:
            assert family.model_type == "qwen3_vl" and "mm_token_type_ids" in str(exc)
        else:
            assert (wrong[-n_response:] - hf_logp[-n_response:]).abs().max().item() > 2 * PIL_TOLERANCE[family.key]
