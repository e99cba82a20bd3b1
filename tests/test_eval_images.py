"""Images as PAPO-Eval hands them to the model: LLaMA-Factory's resize (in the image's own mode, then RGB; each
side >= 28; aspect ratio clamped), then the processor with Qwen's default bounds for every checkpoint, trained or
not, on both backends; the bounds are recorded and any others refused."""

from __future__ import annotations

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vppo.eval_images import PROCESSOR_BOUNDS, PixelBounds, prepare_image, protocol_image_bounds

TRAINING_BOUNDS = (256 * 28 * 28, 1280 * 28 * 28)  # 200704 .. 1003520: what a trained checkpoint may carry


def _noise(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("size,expected", [
    ((900, 880), (776, 759)),    # over 768*768: both sides * sqrt(589824 / 792000), truncated
    ((20, 24), (29, 35)),        # under 32*32: both sides * sqrt(1024 / 480), truncated
    ((10, 10), (32, 32)),
    ((100, 5), (143, 28)),       # upscaled to 143x7, then the short side raised to 28 alone
    ((6000, 20), (5040, 28)),    # short side raised to 28 (ratio 214 > 200), then width = 180 x height
    ((20, 6000), (28, 5040)),
    ((224, 168), (224, 168)),
])
def test_sizes_follow_llamafactory_step_by_step(size, expected):
    out = prepare_image(_noise(size))
    assert out.size == expected and out.mode == "RGB"


def test_a_palette_image_is_resized_in_its_own_mode_then_converted():
    image = _noise((900, 880), "P", seed=1)
    out = prepare_image(image)
    own_mode = image.resize((776, 759), Image.Resampling.NEAREST).convert("RGB")  # PIL's default filter for "P"
    rgb_first = image.convert("RGB").resize((776, 759), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(own_mode))
    assert not np.array_equal(np.asarray(out), np.asarray(rgb_first))


def test_an_alpha_image_is_resized_before_its_alpha_is_dropped():
    image = _noise((20, 24), "RGBA", seed=2)
    expected = image.resize((29, 35), Image.Resampling.BICUBIC).convert("RGB")
    assert np.array_equal(np.asarray(prepare_image(image)), np.asarray(expected))


def test_an_unchanged_image_comes_back_as_a_new_loaded_image(tmp_path):
    path = tmp_path / "a.png"
    _noise((224, 168)).save(path)
    with Image.open(path) as img:
        out = prepare_image(img)
    assert out.size == (224, 168) and np.asarray(out).shape == (168, 224, 3)  # usable after the file is closed


# ------------------------------------------------------------------------------------------- processor bounds

@pytest.fixture(scope="module")
def trained_like_checkpoint(tiny_model_dir, tmp_path_factory):
    """The tiny model with the training bounds saved in its processor config, as a trained checkpoint can be."""
    path = tmp_path_factory.mktemp("trained") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "processor_config.json").read_text())
    config["image_processor"]["size"] = {"shortest_edge": TRAINING_BOUNDS[0], "longest_edge": TRAINING_BOUNDS[1]}
    (path / "processor_config.json").write_text(json.dumps(config))
    return path


def _image_tokens(processor, image) -> int:
    from vppo.rollout import encode_prompts

    ids = encode_prompts(processor, ["<image>How many?"], [[image]])["input_ids"]
    return int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())


def test_hf_backend_gives_a_trained_and_the_base_checkpoint_the_same_image_tokens(tiny_model_dir,
                                                                                 trained_like_checkpoint):
    from vppo.evaluation.lmms_adapter import VPPOHFModel

    image = prepare_image(_noise((224, 168)))
    base = VPPOHFModel(str(tiny_model_dir), device="cpu")
    trained = VPPOHFModel(str(trained_like_checkpoint), device="cpu")
    assert base.image_bounds == trained.image_bounds == PixelBounds(3136, 12845056)
    # 224x168 is 8x6 patches of 28 px under Qwen's default bounds: 48 image tokens for both checkpoints.
    assert _image_tokens(base.processor, image) == _image_tokens(trained.processor, image) == 48


def test_vllm_backend_hands_the_engine_the_protocol_bounds(tiny_model_dir, trained_like_checkpoint, monkeypatch):
    """vLLM sizes images with the processor it builds from ``mm_processor_kwargs``: the protocol's bounds must
    reach it for every checkpoint. (vLLM cannot run here: the engine class records its arguments.)"""
    from vppo.evaluation.vllm_adapter import VPPOVLLMModel

    engines = []

    class RecordingLLM:
        def __init__(self, **kwargs):
            engines.append(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=RecordingLLM, SamplingParams=dict))
    for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):  # a user's shell: none set
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    image = prepare_image(_noise((224, 168)))
    models = [VPPOVLLMModel(str(path), tensor_parallel_size=1) for path in (tiny_model_dir, trained_like_checkpoint)]
    # vLLM's CPU build would reserve 0.9 of the host's memory and refuse to start where less is free
    assert models[0].engine_environment == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert [e["mm_processor_kwargs"] for e in engines] == [{"min_pixels": 3136, "max_pixels": 12845056}] * 2
    assert [e.get("enable_chunked_prefill") for e in engines] == [False] * 2  # on CPU (vllm_adapter.platform_engine_kwargs)
    assert [m.image_bounds for m in models] == [PROCESSOR_BOUNDS] * 2
    assert _image_tokens(models[0].processor, image) == _image_tokens(models[1].processor, image) == 48
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")  # the user's own choice stands
    assert VPPOVLLMModel(str(tiny_model_dir)).engine_environment["VLLM_CPU_KVCACHE_SPACE"] == "40"


def test_the_protocol_check_refuses_other_bounds_and_results_record_them():
    from vppo.evaluation.results import ResultError, validate_result
    from vppo.evaluation.runner import model_violations
    from doubles.reporting_inputs import eval_result

    assert model_violations(SimpleNamespace(image_bounds=PROCESSOR_BOUNDS)) == []
    assert "image processor bounds" in model_violations(SimpleNamespace(image_bounds=PixelBounds(*TRAINING_BOUNDS)))[0]
    assert model_violations(SimpleNamespace()) != []  # a backend that does not say is refused too
    assert protocol_image_bounds() == {"resize": {"min_pixels": 1024, "max_pixels": 589824},
                                       "processor": {"min_pixels": 3136, "max_pixels": 12845056}}
    validate_result(eval_result("tiny", "vppo", "geo3k", 50.0, 1.0))
    other = eval_result("tiny", "vppo", "geo3k", 50.0, 1.0,
                        image_bounds=protocol_image_bounds(PixelBounds(*TRAINING_BOUNDS)))
    with pytest.raises(ResultError, match="image_bounds"):
        validate_result(other)
    missing = eval_result("tiny", "vppo", "geo3k", 50.0, 1.0)
    del missing["image_bounds"]
    with pytest.raises(ResultError, match="image_bounds"):
        validate_result(missing)
