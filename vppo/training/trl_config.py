"""A recipe (:mod:`vppo.training.recipes`) and a method preset as ``trl.GRPOConfig`` keyword arguments.

The mapping (:func:`grpo_config_kwargs`), with W = num_nodes * ranks per node (gpus_per_node, or
``cpu_ranks_per_node`` on CPU, default 1):

==========================  ==============================================================================
recipe key                  GRPOConfig field(s)
==========================  ==============================================================================
rollout_batch_prompts       generation_batch_size = rollout_batch_prompts * num_generations
update_batch_prompts        gradient_accumulation_steps = update * n / (W * micro_batch_responses)
micro_batch_responses       per_device_train_batch_size (responses per forward/backward chunk: memory only)
tas_group_responses         none: our trainer's TAS mu group (consecutive responses of a rank's update)
num_generations             num_generations
learning_rate, weight_decay learning_rate, weight_decay (AdamW: optim="adamw_torch"), lr_scheduler "constant"
warmup_ratio, max_grad_norm warmup_steps (0 when the ratio is 0), max_grad_norm
max_completion_length       max_completion_length (+ vllm_max_model_length = prompt + completion)
temperature, top_p          temperature, top_p (top_k disabled)
(method entropy_coef)       entropy_coef = 0.0: not TRL's bonus on full entropy; the method preset's
                            coef * mean(-logp) enters our loss (vppo.algorithm.policy_loss, docs/protocol.md §4)
method clip_low/clip_high   epsilon / epsilon_high (also used by our loss); loss_type "dapo" (token-mean)
(no reference model)        beta = 0.0
save_steps, logging_steps   save_steps, logging_steps (save_strategy "steps")
report_to                   report_to (default tensorboard; "none" = []; vppo.training.tracking)
use_vllm, vllm_mode         use_vllm, vllm_mode ("colocate" or "server")
vllm_tensor_parallel_size   vllm_tensor_parallel_size (colocate: ranks per vLLM engine; divides the world size)
vllm_gpu_memory_utilization vllm_gpu_memory_utilization (share of each GPU's memory vLLM may take)
vllm_enable_sleep_mode      vllm_enable_sleep_mode (vLLM frees weights and KV cache while the policy trains; "auto":
                            decided when the run starts from the GPU's memory, vppo.training.memory)
bf16, gradient_checkpointing  bf16, gradient_checkpointing
==========================  ==============================================================================

Not expressible in GRPOConfig, handled by us: ``max_prompt_length`` (TRL 1.16 has no prompt limit: rows
whose encoded prompt is longer are dropped when the data is loaded, and counted); dynamic sampling and
``dynamic_sampling_max_rounds`` (our trainer); ``min_pixels``/``max_pixels`` (every training image is
resized once into them when it is read, :mod:`vppo.training.images`; the processor stays the checkpoint's
own); ``num_nodes``/``gpus_per_node``/``cpu_ranks_per_node``/``distributed`` (the accelerate launcher,
``workflow/scripts/launch_train.sh``); the dual-clip constant and the TGF/TAS settings (our loss);
``rollout_layout`` (our trainer: the rollout's rows balanced over the ranks by length, as the official run, or
kept in each rank's own prompt groups, :mod:`vppo.training.balance`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vppo.training.recipes import Recipe, RecipeError
from vppo.training.tracking import report_targets


def _resolved_sleep_mode(recipe: Recipe) -> bool:
    if not isinstance(recipe.vllm_enable_sleep_mode, bool):
        raise RecipeError(f"recipe {recipe.name}: vllm_enable_sleep_mode={recipe.vllm_enable_sleep_mode!r} is decided "
                          "when the run starts (vppo.training.memory.resolve_sleep_mode), not here")
    return recipe.vllm_enable_sleep_mode


def grpo_config_kwargs(recipe: Recipe, preset, output_dir: str | Path, seed: int) -> dict[str, Any]:
    """Keyword arguments for ``trl.GRPOConfig`` (see the module docstring for the mapping)."""
    warmup_steps = 0 if recipe.warmup_ratio == 0 else None
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps if recipe.max_steps is not None else -1,
        per_device_train_batch_size=recipe.micro_batch_responses,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        generation_batch_size=recipe.rollout_batch_prompts * recipe.num_generations,
        num_generations=recipe.num_generations,
        num_iterations=1,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        optim="adamw_torch",
        lr_scheduler_type="constant" if recipe.warmup_ratio == 0 else "constant_with_warmup",
        max_grad_norm=recipe.max_grad_norm,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.temperature,
        top_p=recipe.top_p,
        top_k=0,
        beta=0.0,
        epsilon=preset.clip_low,
        epsilon_high=preset.clip_high,
        loss_type="dapo",
        scale_rewards="group",
        entropy_coef=0.0,
        mask_truncated_completions=False,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        logging_steps=recipe.logging_steps,
        bf16=recipe.bf16,
        gradient_checkpointing=recipe.gradient_checkpointing,
        use_vllm=recipe.use_vllm,
        vllm_mode=recipe.vllm_mode,
        vllm_tensor_parallel_size=recipe.vllm_tensor_parallel_size,
        vllm_gpu_memory_utilization=recipe.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=_resolved_sleep_mode(recipe),
        vllm_importance_sampling_correction=False,  # the official objective has no vLLM/trainer IS correction
        vllm_max_model_length=recipe.max_model_length,
        report_to=report_targets(recipe.report_to),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
        disable_tqdm=False,
        # DeepSpeed runs on CPU through its own CPU accelerator; accelerate's cpu mode would switch it off
        use_cpu=recipe.gpus_per_node == 0 and recipe.distributed != "deepspeed_zero3",
    )
    if recipe.gpus_per_node == 0 and recipe.world_size > 1:
        # without it accelerate initialises no CPU process group under DeepSpeed and every rank believes it is alone
        kwargs["ddp_backend"] = "gloo"
    if warmup_steps is not None:
        kwargs["warmup_steps"] = warmup_steps
    else:
        kwargs["warmup_ratio"] = recipe.warmup_ratio
    return kwargs
