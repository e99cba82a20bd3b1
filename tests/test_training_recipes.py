"""The 7B and 32B recipes in their CPU form: the paper's hyperparameters reach GRPOConfig as intended; the
TAS group is its own key, independent of the memory chunk."""

from __future__ import annotations

import dataclasses
import re

import pytest

from vppo.algorithm import get_method
from vppo.training.recipes import RECIPE_DIR, RecipeError, load_recipe
from vppo.training.trl_config import grpo_config_kwargs


@pytest.mark.parametrize("name, world, micro, accumulation, steps_per_generation",
                         [("7b", 8, 8, 16, 48), ("32b", 32, 4, 8, 24), ("qwen3vl_8b", 8, 8, 16, 48)])
def test_paper_recipes_map_to_the_published_schedule(name, world, micro, accumulation, steps_per_generation,
                                                     tmp_path):
    # sleep mode "auto" is decided when a run starts (tests/test_recipes_vllm.py)
    recipe, preset = dataclasses.replace(load_recipe(name), vllm_enable_sleep_mode=True), get_method("vppo")
    kwargs = grpo_config_kwargs(recipe, preset, tmp_path, seed=0)
    assert recipe.world_size == world and recipe.distributed == "deepspeed_zero3" and recipe.use_vllm
    # 384 prompts x 8 responses per rollout, 128 prompts per update: 3 updates per rollout
    assert kwargs["generation_batch_size"] == 3072 and recipe.updates_per_rollout == 3
    assert kwargs["gradient_accumulation_steps"] == accumulation
    assert recipe.steps_per_generation == steps_per_generation
    assert kwargs["per_device_train_batch_size"] * world * accumulation == 128 * 8
    # the forward/backward chunk fits an 80 GB GPU at full length (docs/cluster.md); TAS's mu still runs over
    # the official 7B script's micro-batch of 16 responses, whole groups within each rank's update
    assert kwargs["per_device_train_batch_size"] == micro and recipe.tas_group_responses == 16
    assert (128 * 8 // world) % recipe.tas_group_responses == 0
    assert recipe.dynamic_sampling_max_rounds is None  # no cap on refills (max_try_make_batch -1)
    assert (kwargs["learning_rate"], kwargs["weight_decay"], kwargs["max_grad_norm"]) == (1e-6, 0.01, 1.0)
    assert (kwargs["epsilon"], kwargs["epsilon_high"], kwargs["beta"]) == (0.2, 0.28, 0.0)
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["max_completion_length"]) == (1.0, 0.99, 2048)
    assert kwargs["num_train_epochs"] == 2 and kwargs["loss_type"] == "dapo"
    assert kwargs["vllm_importance_sampling_correction"] is False
    assert recipe.save_steps % recipe.updates_per_rollout == 0  # checkpoints fall on rollout boundaries


def test_paper_recipe_kwargs_are_accepted_by_trl_in_cpu_form(tmp_path):
    from trl import GRPOConfig

    recipe = dataclasses.replace(load_recipe("7b"), bf16=False, gpus_per_node=0, use_vllm=False,
                                 vllm_enable_sleep_mode=False)
    kwargs = grpo_config_kwargs(recipe, get_method("dapo"), tmp_path, seed=3)
    config = GRPOConfig(**{**kwargs, "use_cpu": True})
    assert config.generation_batch_size == 3072 and config.seed == 3 and config.num_generations == 8


def test_the_smoke_recipe_groups_tas_as_its_micro_batches():
    recipe = load_recipe("smoke")
    assert recipe.tas_group_responses == recipe.micro_batch_responses == 4


@pytest.mark.parametrize("group", [0, -4, 3, 32])
def test_a_tas_group_that_does_not_split_the_update_is_refused(group):
    # smoke: 2 prompts x 4 responses = 8 responses per update on one rank
    with pytest.raises(RecipeError, match=r"--set.*'tas_group_responses' \(%d\).*8 update responses" % group):
        load_recipe("smoke", {"tas_group_responses": group})


def test_the_tas_group_may_exceed_or_split_the_micro_batch():
    assert load_recipe("smoke", {"micro_batch_responses": 2, "tas_group_responses": 8}).gradient_accumulation_steps == 4
    assert load_recipe("smoke", {"micro_batch_responses": 8, "tas_group_responses": 2}).gradient_accumulation_steps == 1


def test_entropy_coef_has_one_home_the_method_preset(tmp_path):
    """The entropy penalty is a method setting (vppo.catalog presets); a recipe naming it is refused, so a
    recipe value can never differ silently from the preset the run records."""
    assert all("entropy_coef" not in path.read_text() for path in RECIPE_DIR.glob("*.yaml"))
    text = (RECIPE_DIR / "smoke.yaml").read_text()
    with pytest.raises(RecipeError, match="entropy_coef.*method preset"):
        load_recipe("smoke", {"entropy_coef": 0.12})
    stale = tmp_path / "stale.yaml"
    stale.write_text(text + "entropy_coef: 0.12\n")
    with pytest.raises(RecipeError, match=r"stale\.yaml.*entropy_coef.*method preset"):
        load_recipe(str(stale))
    assert get_method("vppo").entropy_coef == 0.06


# ------------------------------------------------------------------ the study's two method options

def test_estimator_and_masking_default_to_the_method_preset():
    """Unset (null, or absent from the recipe file), the preset's own choice stands: k3 and patch blackening."""
    from vppo.training.recipes import method_preset

    recipe = load_recipe("smoke")
    assert recipe.dependency_estimator is None and recipe.masking is None
    assert method_preset("vppo", recipe) == get_method("vppo")
    assert all("dependency_estimator" not in p.read_text() and "masking" not in p.read_text()
               for p in RECIPE_DIR.glob("*.yaml"))  # optional keys: recipes without them stay valid


@pytest.mark.parametrize("overrides, expected", [
    ({"dependency_estimator": "kl"}, ("kl", "patch")),
    ({"masking": "grey"}, ("k3", "grey")),
    ({"dependency_estimator": "kl", "masking": "blur"}, ("kl", "blur")),
])
def test_estimator_and_masking_are_selected_per_run(overrides, expected):
    from vppo.training.recipes import method_preset

    for method in ("vppo", "vppo_tas_only", "vppo_k0.2"):
        preset = method_preset(method, load_recipe("smoke", overrides))
        assert (preset.dependency_estimator, preset.masking) == expected
        assert dataclasses.replace(preset, dependency_estimator="k3", masking="patch") == get_method(method)


@pytest.mark.parametrize("overrides, needle", [
    ({"dependency_estimator": "k2"}, r"'dependency_estimator'.*'k2'.*\['k3', 'kl'\]"),
    ({"masking": "black"}, r"'masking'.*'black'.*\['blur', 'grey', 'noise', 'patch'\]"),
])
def test_unknown_estimator_or_masking_names_are_refused(overrides, needle):
    with pytest.raises(RecipeError, match=needle):
        load_recipe("smoke", overrides)


@pytest.mark.parametrize("method", ["grpo", "dapo"])
def test_estimator_and_masking_are_refused_for_methods_without_the_masked_pass(method):
    """dapo and grpo never mask an image: a run claiming a masking strategy for them would record a choice that
    had no effect."""
    from vppo.training.recipes import method_preset

    with pytest.raises(RecipeError, match=rf"masking.*{method}.*no masked-image pass"):
        method_preset(method, load_recipe("smoke", {"masking": "grey"}))


# ------------------------------------------------- presets that carry their own dependency pass

@pytest.mark.parametrize("method, expected", [
    ("vppo", ("k3", "patch")), ("vppo_exact_kl", ("kl", "patch")), ("vppo_grey", ("k3", "grey")),
    ("vppo_noise", ("k3", "noise")), ("vppo_blur", ("k3", "blur")),
])
def test_the_method_name_alone_selects_the_dependency_pass_the_trainer_runs(method, expected):
    """What the trainer reads (preset.dependency_estimator / preset.masking) comes from the name, with a recipe
    that sets nothing; apart from the dependency pass each is the published vppo."""
    from vppo.training.recipes import method_preset

    preset = method_preset(method, load_recipe("smoke"))
    assert (preset.dependency_estimator, preset.masking) == expected and preset.name == method
    assert dataclasses.replace(preset, name="vppo", dependency_estimator="k3", masking="patch") == get_method("vppo")


@pytest.mark.parametrize("method, overrides, expected", [
    ("vppo_grey", {"masking": "grey"}, ("k3", "grey")),  # agreeing with the preset is no conflict
    ("vppo_grey", {"dependency_estimator": "kl"}, ("kl", "grey")),  # the preset leaves the estimator at k3
    ("vppo_exact_kl", {"masking": "blur"}, ("kl", "blur")),
])
def test_a_recipe_may_set_what_the_preset_leaves_at_its_default(method, overrides, expected):
    from vppo.training.recipes import method_preset

    preset = method_preset(method, load_recipe("smoke", overrides))
    assert (preset.dependency_estimator, preset.masking) == expected


@pytest.mark.parametrize("method, overrides, needle", [
    ("vppo_grey", {"masking": "noise"}, "masking=noise contradicts method vppo_grey, whose masking is grey"),
    ("vppo_grey", {"masking": "patch"}, "masking=patch contradicts method vppo_grey, whose masking is grey"),
    ("vppo_exact_kl", {"dependency_estimator": "k3"},
     "dependency_estimator=k3 contradicts method vppo_exact_kl, whose dependency_estimator is kl"),
])
def test_a_recipe_contradicting_the_presets_own_choice_is_refused(method, overrides, needle):
    from vppo.training.recipes import method_preset

    with pytest.raises(RecipeError, match=re.escape(needle)):
        method_preset(method, load_recipe("smoke", overrides))


def test_vppo_train_names_the_conflict_in_one_line_and_exits_2(tmp_path, capsys):
    from vppo.cli import main

    code = main(["train", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--recipe", "smoke",
                 "--method", "vppo_grey", "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--set", "masking=noise"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("vppo train: recipe smoke (file or --set): masking=noise contradicts method vppo_grey")
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_cpu_ranks_set_the_world_size_of_cpu_layouts_only():
    from vppo.training.recipes import RecipeError

    recipe = load_recipe("cpu_zero3")
    assert (recipe.ranks_per_node, recipe.world_size, recipe.gradient_accumulation_steps) == (2, 2, 2)
    assert load_recipe("smoke").world_size == 1 and load_recipe("7b").ranks_per_node == 8
    with pytest.raises(RecipeError, match="cpu_ranks_per_node"):
        load_recipe("7b", {"cpu_ranks_per_node": 2})
    with pytest.raises(RecipeError, match="cpu_ranks_per_node"):
        load_recipe("cpu_zero3", {"cpu_ranks_per_node": 0})


def test_cpu_zero3_keeps_deepspeed_on_and_talks_over_gloo():
    from vppo.algorithm import get_method

    kwargs = grpo_config_kwargs(load_recipe("cpu_zero3"), get_method("vppo"), "/w", 0)
    # use_cpu would make accelerate switch DeepSpeed off; without gloo every rank would believe it is alone
    assert kwargs["use_cpu"] is False and kwargs["ddp_backend"] == "gloo"
    smoke = grpo_config_kwargs(load_recipe("smoke"), get_method("vppo"), "/w", 0)
    assert smoke["use_cpu"] is True and "ddp_backend" not in smoke


def test_the_run_identity_leaves_out_exactly_the_operational_keys():
    from vppo.training.recipes import OPERATIONAL_KEYS, RECIPE_KEYS, run_identity

    assert set(OPERATIONAL_KEYS) <= set(RECIPE_KEYS)  # a misspelt key would silently stay in the identity
    values = dataclasses.asdict(load_recipe("7b"))
    identity = run_identity(values)
    assert set(identity) == set(RECIPE_KEYS) - set(OPERATIONAL_KEYS) - {"cpu_ranks_per_node", "rollout_layout",
                                                                        "dependency_estimator", "masking"}
    memory_fix = dataclasses.asdict(load_recipe("7b", {"micro_batch_responses": 4, "vllm_enable_sleep_mode": False}))
    assert run_identity(memory_fix) == identity
    assert run_identity(dataclasses.asdict(load_recipe("7b", {"top_p": 0.9}))) != identity
