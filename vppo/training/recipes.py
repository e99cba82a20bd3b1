"""Training recipes: ``vppo/training/recipes/*.yaml`` (smoke, mini, cpu_zero3, 7b, 32b), validated, mapped to TRL.

A recipe is the schedule and the hardware layout; the method (grpo, dapo, vppo, ablations) is a separate
preset from :func:`vppo.catalog.get_method` and supplies clip ranges, TGF/TAS settings and filtering.

How a recipe's keys become ``trl.GRPOConfig`` fields, and which keys our code handles instead:
:mod:`vppo.training.trl_config`.

How a TGF/TAS method measures vision dependency is the method preset's: ``dependency_estimator`` (``k3``, the
official code, or ``kl``, the paper's exact full-vocabulary KL: :mod:`vppo.training.exact_kl`) and ``masking`` (a
strategy of :data:`vppo.masking.MASKING_STRATEGIES`); ``vppo_exact_kl``, ``vppo_grey``, ... are vppo with one of
them changed. The two keys also exist, optional, in a recipe (``--set masking=grey``): absent or null, the
preset's value stands; set, it replaces a preset field still at its default (:func:`method_preset`), and
contradicting a preset that chose its own (``vppo_grey`` with ``masking=noise``) is an error. The run records the
resulting preset.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from vppo.errors import InputError, parse_key_values
from vppo.training.tracking import DEFAULT_REPORT_TO, report_targets

RECIPE_DIR = Path(__file__).parent / "recipes"
DISTRIBUTED_BACKENDS = ("none", "deepspeed_zero3", "fsdp")


class RecipeError(InputError, ValueError):
    """A recipe file or override is invalid; the message names the file and key."""


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    num_train_epochs: float
    max_steps: int | None
    rollout_batch_prompts: int
    num_generations: int
    update_batch_prompts: int
    micro_batch_responses: int
    tas_group_responses: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    max_prompt_length: int
    max_completion_length: int
    temperature: float
    top_p: float
    dynamic_sampling_max_rounds: int | None
    save_steps: int
    logging_steps: int
    bf16: bool
    gradient_checkpointing: bool
    use_vllm: bool
    vllm_mode: str
    vllm_tensor_parallel_size: int
    vllm_gpu_memory_utilization: float
    vllm_enable_sleep_mode: bool | str  # or "auto": off where the GPU's memory allows (vppo.training.memory)
    min_pixels: int | None
    max_pixels: int | None
    num_nodes: int
    gpus_per_node: int
    distributed: str
    # The two method options the study varies per run (METHOD_OPTION_KEYS: null or absent = the method preset's own)
    dependency_estimator: str | None = None
    masking: str | None = None
    # CPU layouts only (gpus_per_node 0): training processes per node, talking over gloo (null: one). The
    # distributed test tier runs ZeRO-3 and colocated vLLM this way; GPU recipes leave it out.
    cpu_ranks_per_node: int | None = None
    # How the rollout's rows are spread over the ranks (vppo.training.balance.ROLLOUT_LAYOUTS; null: balanced, the
    # official run's). The same on one process.
    rollout_layout: str | None = None
    # Where the run's metrics go besides training_log.jsonl (vppo.training.tracking): may be absent from a file
    report_to: str = DEFAULT_REPORT_TO

    @property
    def max_model_length(self) -> int:
        """Prompt + response tokens: vLLM's context length."""
        return self.max_prompt_length + self.max_completion_length

    @property
    def ranks_per_node(self) -> int:
        """Training processes per node: one per GPU, or ``cpu_ranks_per_node`` (default 1) on CPU."""
        return self.gpus_per_node or (self.cpu_ranks_per_node or 1)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.ranks_per_node

    @property
    def updates_per_rollout(self) -> int:
        return self.rollout_batch_prompts // self.update_batch_prompts

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.update_batch_prompts * self.num_generations // (self.world_size * self.micro_batch_responses)

    @property
    def steps_per_generation(self) -> int:
        return self.rollout_batch_prompts * self.num_generations // (self.world_size * self.micro_batch_responses)


RECIPE_KEYS = tuple(f.name for f in fields(Recipe) if f.name != "name")
#: Method options a recipe may set (null or absent: the method preset's own); set, they replace a preset field.
METHOD_OPTION_KEYS = ("dependency_estimator", "masking")
#: Keys a recipe file may leave out (null); a run's identity leaves them out while unset.
OPTIONAL_KEYS = (*METHOD_OPTION_KEYS, "cpu_ranks_per_node", "rollout_layout")
#: Keys a recipe file may leave out with a default of their own.
DEFAULTED_KEYS = {"report_to": DEFAULT_REPORT_TO}
#: Keys that change how a run is computed, stored or watched, not what it trains: a work dir resumes whatever they
#: are (an out-of-memory fix must not restart two days of training), so the run's identity leaves them out
#: (:func:`run_identity`; docs/cluster.md). Memory and placement: ``micro_batch_responses`` (the forward chunk; TAS
#: groups and the token-mean denominator are per update, so only the float summation order changes),
#: ``gradient_checkpointing`` (recomputes the same activations), the vLLM engine's ``vllm_gpu_memory_utilization``,
#: ``vllm_enable_sleep_mode`` and ``vllm_tensor_parallel_size`` (where the sampler's weights and KV cache live; the
#: sampled distribution is the policy's). Cadence and bookkeeping: ``save_steps``, ``logging_steps``, ``report_to``,
#: ``description``; ``dynamic_sampling_max_rounds`` (a safety cap: it stops a run, never changes a step it trains);
#: ``max_steps`` (a run may be trained on). Every other key (batch sizes, optimizer, sampling, lengths, pixel
#: bounds, precision, sampler engine, world size and layout, method options) is part of the identity.
OPERATIONAL_KEYS = ("micro_batch_responses", "gradient_checkpointing", "vllm_gpu_memory_utilization",
                    "vllm_enable_sleep_mode", "vllm_tensor_parallel_size", "save_steps", "logging_steps", "report_to",
                    "description", "dynamic_sampling_max_rounds", "max_steps")
#: Keys that belong to the method preset, not the recipe: one home each, so a recipe cannot contradict the preset
#: a run records. A new value is a new preset in vppo.catalog.METHOD_PRESETS.
METHOD_KEYS = ("entropy_coef",)
_TYPES = {f.name: f.type for f in fields(Recipe)}


def run_identity(recipe_values: dict[str, Any]) -> dict[str, Any]:
    """The recipe keys that define what a run trains (a work dir resumes only the same identity): every key but
    :data:`OPERATIONAL_KEYS`, and optional keys only when set (work dirs claimed before they existed lack them).
    ``recipe_values`` is ``dataclasses.asdict(recipe)`` or the recipe a work dir recorded."""
    return {key: value for key, value in recipe_values.items()
            if key not in OPERATIONAL_KEYS and key != "name" and not (key in OPTIONAL_KEYS and value is None)}


#: Words a key takes besides values of its type
KEY_WORDS = {"vllm_enable_sleep_mode": ("auto",)}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check/convert one value against the dataclass annotation (str form, from __future__ annotations)."""
    kind = _TYPES[key]
    if isinstance(value, str) and value in KEY_WORDS.get(key, ()):
        return value
    if value is None:
        if "None" in kind:
            return None
        raise RecipeError(f"{where}: key {key!r} may not be null")
    base = kind.split("|")[0].strip()
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                return value.lower() == "true"
            if not isinstance(value, bool) and value not in (0, 1):  # bf16: 5 is a typo, not "true"
                raise ValueError(value)
            return bool(value)
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return {"float": float, "str": str}[base](value)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: key {key!r}: {value!r} is not a valid {base}") from exc


#: Integer keys and their least valid value (a GRPO group needs two responses to have an advantage).
POSITIVE_KEYS = {"max_steps": 1, "rollout_batch_prompts": 1, "num_generations": 2, "update_batch_prompts": 1,
                 "micro_batch_responses": 1, "max_prompt_length": 1, "max_completion_length": 1, "save_steps": 1,
                 "logging_steps": 1, "num_nodes": 1, "dynamic_sampling_max_rounds": 1, "cpu_ranks_per_node": 1}


def validate(recipe: Recipe, where: str) -> Recipe:
    """Cross-field checks: batch sizes divide, save points fall on rollout boundaries."""
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise RecipeError(f"{where}: {message}")

    for key, low in POSITIVE_KEYS.items():  # checked first: the batch arithmetic below divides by them
        value = getattr(recipe, key)
        need(value is None or value >= low, f"key {key!r} must be at least {low}, got {value}")
    need(recipe.gpus_per_node >= 0, f"key 'gpus_per_node' must be at least 0, got {recipe.gpus_per_node}")
    need(recipe.cpu_ranks_per_node is None or recipe.gpus_per_node == 0,
         f"key 'cpu_ranks_per_node' is for CPU layouts only (gpus_per_node 0), got gpus_per_node {recipe.gpus_per_node}")
    for key in ("learning_rate", "temperature", "top_p"):
        need(getattr(recipe, key) > 0, f"key {key!r} must be positive, got {getattr(recipe, key)}")
    need(recipe.top_p <= 1, f"key 'top_p' must be at most 1, got {recipe.top_p}")
    need(recipe.distributed in DISTRIBUTED_BACKENDS, f"key 'distributed' must be one of {DISTRIBUTED_BACKENDS}")
    need(recipe.vllm_mode in ("colocate", "server"), "key 'vllm_mode' must be 'colocate' or 'server'")
    need(0 < recipe.vllm_gpu_memory_utilization <= 1, "key 'vllm_gpu_memory_utilization' must be in (0, 1]")
    need(recipe.vllm_tensor_parallel_size >= 1 and recipe.world_size % recipe.vllm_tensor_parallel_size == 0,
         f"key 'vllm_tensor_parallel_size' ({recipe.vllm_tensor_parallel_size}) must divide the "
         f"{recipe.world_size} training ranks (each group of that many ranks shares one colocated vLLM engine)")
    need(colocated_group_problem(recipe) is None, str(colocated_group_problem(recipe)))
    need(recipe.rollout_batch_prompts % recipe.update_batch_prompts == 0,
         "rollout_batch_prompts must be a multiple of update_batch_prompts")
    per_rank_update = recipe.update_batch_prompts * recipe.num_generations
    need(per_rank_update % (recipe.world_size * recipe.micro_batch_responses) == 0,
         f"update_batch_prompts * num_generations ({per_rank_update}) must divide into "
         f"{recipe.world_size} ranks x micro_batch_responses {recipe.micro_batch_responses}")
    need(recipe.tas_group_responses >= 1 and per_rank_update % (recipe.world_size * recipe.tas_group_responses) == 0,
         f"key 'tas_group_responses' ({recipe.tas_group_responses}) must be a positive int dividing each rank's "
         f"{per_rank_update // recipe.world_size} update responses (every TAS group is whole, as the official "
         "micro-batches are)")
    local_rollout = recipe.rollout_batch_prompts * recipe.num_generations // recipe.world_size
    need(recipe.rollout_batch_prompts * recipe.num_generations % recipe.world_size == 0
         and local_rollout % recipe.num_generations == 0,
         "each rank's share of the rollout batch must hold whole groups (dynamic sampling filters per rank)")
    need(recipe.save_steps % recipe.updates_per_rollout == 0,
         f"save_steps must be a multiple of the {recipe.updates_per_rollout} updates per rollout "
         "(a checkpoint inside a rollout could not resume exactly)")
    need(recipe.dynamic_sampling_max_rounds is None or recipe.dynamic_sampling_max_rounds >= 1,
         "dynamic_sampling_max_rounds must be null (no cap) or >= 1")
    for key, registry in _option_registries().items():
        value = getattr(recipe, key)
        need(value is None or value in registry,
             f"key {key!r}: {value!r} is not one of {sorted(registry)} (null: the method preset's own)")
    from vppo.training.balance import ROLLOUT_LAYOUTS

    need(recipe.rollout_layout is None or recipe.rollout_layout in ROLLOUT_LAYOUTS,
         f"key 'rollout_layout': {recipe.rollout_layout!r} is not one of {sorted(ROLLOUT_LAYOUTS)} (null: balanced)")
    try:
        report_targets(recipe.report_to)
    except ValueError as exc:
        need(False, f"key 'report_to': {exc}")
    return recipe


def colocated_group_problem(recipe: Recipe) -> str | None:
    """Why a colocated vLLM engine's tensor-parallel group would span GPU nodes, or None. Torch-free: the workflow
    checks every configured recipe with it before anything is queued. GPU layouts only: there a group's
    all-reduces, two per layer and token, would cross the network instead of NVLink; a CPU layout (gloo, the
    test layouts) may span nodes, and the two-node test runs a TP-2 engine across two one-rank nodes on purpose."""
    colocated = recipe.use_vllm and recipe.vllm_mode == "colocate" and recipe.gpus_per_node > 0
    if colocated and recipe.ranks_per_node % recipe.vllm_tensor_parallel_size:
        return (f"key 'vllm_tensor_parallel_size' ({recipe.vllm_tensor_parallel_size}) must divide the node's "
                f"{recipe.ranks_per_node} ranks (gpus_per_node): a colocated engine's tensor-parallel group stays "
                "on one node")
    return None


def _option_registries() -> dict[str, dict]:
    from vppo.algorithm import DEPENDENCY_ESTIMATORS
    from vppo.masking import MASKING_STRATEGIES

    return {"dependency_estimator": DEPENDENCY_ESTIMATORS, "masking": MASKING_STRATEGIES}


def preset_default(key: str):
    """The value a :class:`vppo.catalog.MethodPreset` field has when a preset does not choose it."""
    from vppo.catalog import MethodPreset

    return next(f.default for f in fields(MethodPreset) if f.name == key)


def method_preset(method: str, recipe: Recipe):
    """The method preset a run trains: ``vppo.catalog.get_method(method)`` with the recipe's
    ``dependency_estimator`` and ``masking`` where they are set (the run records the resulting preset).

    Both act in the masked-image pass only, so a method without it (grpo, dapo) refuses them: its record would
    name a choice that had no effect. A preset that chose its own value (vppo_grey's grey) accepts the same value
    and refuses another: the run would be recorded under a method name that says something else.
    """
    import dataclasses

    from vppo.catalog import get_method

    preset = get_method(method)
    chosen = {key: getattr(recipe, key) for key in METHOD_OPTION_KEYS if getattr(recipe, key) is not None}
    if chosen and not preset.needs_masked_pass:
        raise RecipeError(f"recipe {recipe.name}: {', '.join(sorted(chosen))} set, but method {method} has no "
                          "masked-image pass (only TGF/TAS methods compute a vision dependency)")
    for key, value in sorted(chosen.items()):
        own = getattr(preset, key)
        if own != preset_default(key) and value != own:
            raise RecipeError(f"recipe {recipe.name} (file or --set): {key}={value} contradicts method {method}, "
                              f"whose {key} is {own}; drop the setting, or train a method that leaves {key} at "
                              f"its default (e.g. vppo --set {key}={value})")
    return dataclasses.replace(preset, **chosen)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict with YAML-typed values (so 1e-6, true, null work)."""
    try:
        return parse_key_values(pairs, "--set")
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def _refuse_method_keys(keys, where: str) -> None:
    owned = sorted(set(keys) & set(METHOD_KEYS))
    if owned:
        raise RecipeError(f"{where}: {', '.join(owned)} is set by the method preset (vppo.catalog.METHOD_PRESETS), "
                          "not the recipe; remove it, or add a method preset with the value you want")


def recipe_from_mapping(name: str, data: dict[str, Any], where: str) -> Recipe:
    _refuse_method_keys(data, where)
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(RECIPE_KEYS)}")
    missing = sorted(set(RECIPE_KEYS) - set(data) - set(OPTIONAL_KEYS) - set(DEFAULTED_KEYS))
    if missing:
        raise RecipeError(f"{where}: missing key(s) {', '.join(missing)}")
    values = {key: _coerce(key, data.get(key, DEFAULTED_KEYS.get(key)), where) for key in RECIPE_KEYS}
    return validate(Recipe(name=name, **values), where)


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None, max_steps: int | None = None) -> Recipe:
    """A recipe by name (a stem of ``vppo/training/recipes/*.yaml``: ``smoke``, ``mini``, ``7b``, ...) or YAML path, with ``overrides`` (and ``--max-steps``,
    when given) applied and validated."""
    if max_steps is not None:
        overrides = {**(overrides or {}), "max_steps": max_steps}
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise RecipeError(f"recipe {name_or_path!r}: no file {path} (known recipes: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: top level must be a mapping")
    where = str(path)
    if overrides:
        _refuse_method_keys(overrides, f"--set (recipe {path})")
        unknown = sorted(set(overrides) - set(RECIPE_KEYS))
        if unknown:
            raise RecipeError(f"--set: unknown recipe key(s) {', '.join(unknown)} (recipe {path})")
        data = {**data, **overrides}
        where = f"{path} with --set {sorted(overrides)}"
    return recipe_from_mapping(path.stem, data, where)
