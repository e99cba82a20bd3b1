"""vLLM placement keys of the recipes (tensor parallel size, memory share, sleep mode): the 7B and 32B values of
docs/cluster.md reach GRPOConfig, and impossible values are refused naming the key."""

from __future__ import annotations

import dataclasses

import pytest

from vppo.algorithm import get_method
from vppo.training.memory import Architecture, rollout_pixels_gb, sleep_mode_for, training_peak_gb
from vppo.training.recipes import RecipeError, load_recipe
from vppo.training.trl_config import grpo_config_kwargs

VLLM_KEYS = ("vllm_tensor_parallel_size", "vllm_gpu_memory_utilization", "vllm_enable_sleep_mode")
#: (language model, parameters with the vision tower) of Qwen2.5-VL-7B and -32B (their config.json; docs/cluster.md)
MODELS = {"7b": (Architecture(layers=28, hidden=3584, mlp=18944, vocab=152064), 8.3e9),
          "32b": (Architecture(layers=64, hidden=5120, mlp=27648, vocab=152064), 33.5e9)}


def test_the_budget_functions_give_the_tables_of_docs_cluster_md():
    (arch7, params7), (arch32, params32) = MODELS["7b"], MODELS["32b"]
    assert training_peak_gb(arch7, params7, 8, 8, 6144, 2048) == pytest.approx(51.0, abs=0.1)
    assert training_peak_gb(arch32, params32, 32, 4, 6144, 2048) == pytest.approx(48.4, abs=0.1)
    assert training_peak_gb(arch7, params7, 8, 16, 6144, 2048) == pytest.approx(81.4, abs=0.1)
    # 384 rows per rank, each with a 1280 x 28 x 28-pixel image, real and masked, in bf16: 12 MB per copy
    assert rollout_pixels_gb(384, 1003520) == pytest.approx(2 * 384 * 0.01204, rel=1e-3)


@pytest.mark.parametrize("name", ["7b", "32b"])
def test_sleep_mode_auto_is_on_for_80_gb_gpus_and_off_for_141_gb_ones(name):
    recipe = load_recipe(name)
    assert recipe.vllm_enable_sleep_mode == "auto"
    assert sleep_mode_for(recipe, *MODELS[name], gpu_gb=80) is True
    assert sleep_mode_for(recipe, *MODELS[name], gpu_gb=141) is False
    assert sleep_mode_for(recipe, *MODELS[name], gpu_gb=None) is False  # no CUDA: sleep mode does not exist
    bigger_chunks = dataclasses.replace(recipe, micro_batch_responses=32)  # the training peak no longer fits
    assert sleep_mode_for(bigger_chunks, *MODELS[name], gpu_gb=141) is True
    with pytest.raises(RecipeError, match="decided when the run starts"):
        grpo_config_kwargs(recipe, get_method("vppo"), ".", seed=0)
    assert load_recipe(name, {"vllm_enable_sleep_mode": False}).vllm_enable_sleep_mode is False
    with pytest.raises(RecipeError, match="vllm_enable_sleep_mode"):
        load_recipe(name, {"vllm_enable_sleep_mode": "sometimes"})


@pytest.mark.parametrize("name, expected", [("7b", (1, 0.55, True)), ("32b", (4, 0.55, True))])
def test_paper_recipes_set_vllm_placement_and_trl_accepts_it(name, expected, tmp_path):
    from trl import GRPOConfig

    recipe = load_recipe(name)
    recipe = dataclasses.replace(recipe, vllm_enable_sleep_mode=sleep_mode_for(recipe, *MODELS[name], gpu_gb=80))
    kwargs = grpo_config_kwargs(recipe, get_method("vppo"), tmp_path, seed=0)
    assert tuple(kwargs[key] for key in VLLM_KEYS) == expected
    # TRL's own defaults (1, 0.3, off) would put the whole 32B model on every GPU: not what the recipes ask.
    defaults = GRPOConfig.__dataclass_fields__
    assert name == "7b" or kwargs["vllm_tensor_parallel_size"] != defaults["vllm_tensor_parallel_size"].default
    # one CPU process (a CPU recipe of several ranks would ask for a gloo process group this test has not got)
    cpu = dataclasses.replace(recipe, bf16=False, gpus_per_node=0, num_nodes=1, use_vllm=False)
    config = GRPOConfig(**{**grpo_config_kwargs(cpu, get_method("vppo"), tmp_path, seed=0), "use_cpu": True})
    assert (config.vllm_gpu_memory_utilization, config.vllm_enable_sleep_mode) == expected[1:]


def test_vllm_keys_can_be_overridden_from_the_command_line():
    recipe = load_recipe("32b", {"vllm_tensor_parallel_size": 8, "vllm_gpu_memory_utilization": 0.7})
    assert (recipe.vllm_tensor_parallel_size, recipe.vllm_gpu_memory_utilization) == (8, 0.7)


@pytest.mark.parametrize("overrides, message", [
    ({"vllm_tensor_parallel_size": 3}, "'vllm_tensor_parallel_size' .3. must divide the 32 training ranks"),
    ({"vllm_gpu_memory_utilization": 1.5}, "'vllm_gpu_memory_utilization' must be in"),
    ({"vllm_gpu_memory_utilization": 0}, "'vllm_gpu_memory_utilization' must be in"),
])
def test_impossible_vllm_placement_is_refused_naming_the_key(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("32b", overrides)


def test_sleep_mode_auto_reads_the_checkpoint(tiny_model_dir):
    import json

    from safetensors.torch import load_file

    from vppo.training.memory import checkpoint_parameters, resolve_sleep_mode

    weights = load_file(tiny_model_dir / "model.safetensors")
    assert checkpoint_parameters(tiny_model_dir) == sum(t.numel() for t in weights.values())
    text = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    assert Architecture.from_config(json.loads((tiny_model_dir / "config.json").read_text())).layers == \
        text["num_hidden_layers"]
    # without CUDA sleep mode does not exist; on a GPU the tiny model's budget fits beside vLLM's share: off both ways
    assert resolve_sleep_mode(load_recipe("7b"), tiny_model_dir).vllm_enable_sleep_mode is False
    assert resolve_sleep_mode(load_recipe("smoke"), tiny_model_dir) == load_recipe("smoke")  # explicit: unchanged
