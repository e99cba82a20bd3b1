"""vLLM placement keys of the recipes (tensor parallel size, memory share, sleep mode): the 7B and 32B values of
docs/cluster.md reach GRPOConfig, and impossible values are refused naming the key."""

from __future__ import annotations

import dataclasses

import pytest

from vppo.algorithm import get_method
from vppo.training.recipes import RecipeError, grpo_config_kwargs, load_recipe

VLLM_KEYS = ("vllm_tensor_parallel_size", "vllm_gpu_memory_utilization", "vllm_enable_sleep_mode")


@pytest.mark.parametrize("name, expected", [("7b", (1, 0.55, True)), ("32b", (4, 0.55, True))])
def test_paper_recipes_set_vllm_placement_and_trl_accepts_it(name, expected, tmp_path):
    from trl import GRPOConfig

    recipe = load_recipe(name)
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
