"""``vppo fetch-model tiny-vllm``: the width vLLM's CPU attention accepts and a hub checkpoint's processor files,
whose bounds agree with the processor the harness loads."""

from __future__ import annotations

import json

from vppo.modeling import load_processor

HUB_PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                       "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def test_tiny_vllm_has_head_dim_64_and_the_hub_processor_files(vllm_model_dir):
    text = json.loads((vllm_model_dir / "config.json").read_text())["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == 64
    assert all((vllm_model_dir / name).is_file() for name in HUB_PROCESSOR_FILES)
    size = load_processor(vllm_model_dir).image_processor.size
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        config = json.loads((vllm_model_dir / name).read_text())
        assert (config["min_pixels"], config["max_pixels"]) == (size["shortest_edge"], size["longest_edge"])
    info = json.loads((vllm_model_dir / "vppo_tiny.json").read_text())
    assert info["shape"] == "vllm" and info["warm_start"]["loss_last"] < info["warm_start"]["loss_first"]
