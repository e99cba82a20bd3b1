"""TRL's colocated vLLM engine, made to run the trainer's prompts and weights (on CPU and on GPUs).

Three gaps in TRL 1.16's colocate mode, closed by wrapping its ``VLLMGeneration`` (:func:`install_colocate_fixes`):

- **Image tokens expanded twice.** TRL hands vLLM the trainer's prompt ids, in which the processor already
  expanded each image's ``<|image_pad|>`` to one token per vision feature, plus the images. vLLM 0.31 runs its
  own processor on the images and expands every image's FIRST placeholder again: a 12-token image became 23
  tokens (measured), so rollouts were sampled from a corrupted prompt while the trainer scored the correct
  one (TRL issue #6294, open for TRL 1.16). Each run of image tokens is collapsed to one placeholder before
  vLLM sees it (:func:`collapse_image_runs`); vLLM then expands it with its own processor, and the prompt ids
  it ran must equal the trainer's, or the rollout stops (:class:`RolloutPromptMismatch`): a processor that
  counts image tokens differently from the trainer's can never again go unnoticed.
- **Weight push on CPU.** TRL writes each parameter with the vLLM model's ``load_weights``. vLLM's CPU backend
  repacks linear weights for its GEMM kernels after loading and drops their loader hooks, so a second
  ``load_weights`` fails ("'Parameter' object has no attribute 'weight_loader'"). vLLM's own in-place update,
  the model runner's ``reload_weights(weights_iterator=...)``, restores the loader metadata, loads the same
  checkpoint-format tensors and re-runs the post-load processing: CPU engines use it; GPU engines keep TRL's.
- **Stale vision features.** vLLM caches vision-encoder outputs by image hash across requests and a prefix-cache
  reset leaves them, so a rollout meeting an image again after an update would reuse features of the old
  weights (after ``reload_weights``, which clears only the runner's half, the next request even failed with
  "Encoder cache miss"). The engine-level ``reset_encoder_cache``, meant for weight updates, runs after every push.
"""

from __future__ import annotations

import os
from typing import Sequence


class RolloutPromptMismatch(RuntimeError):
    """vLLM ran a prompt whose token ids differ from the trainer's (the image token counts disagree)."""


def collapse_image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """``ids`` with every run of consecutive ``image_token_id`` tokens reduced to one token (one per image)."""
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(int(token))
    return out


def first_mismatch(trainer_ids: Sequence[Sequence[int]], engine_ids: Sequence[Sequence[int]],
                   image_token_id: int) -> str | None:
    """None when every prompt matches, else one line naming the first prompt that does not."""
    if len(trainer_ids) != len(engine_ids):
        return f"vLLM returned {len(engine_ids)} prompts for {len(trainer_ids)}"
    for i, (ours, theirs) in enumerate(zip(trainer_ids, engine_ids)):
        if list(ours) != list(theirs):
            return (f"prompt {i}: the trainer encoded {len(ours)} tokens ({list(ours).count(image_token_id)} image "
                    f"tokens), vLLM ran {len(theirs)} ({list(theirs).count(image_token_id)} image tokens)")
    return None


def engine_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def reload_colocated_weights(generation) -> None:
    """The CPU engine's weight push: one in-place reload from the trainer's parameters (checkpoint names)."""
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
    generation.llm.reset_prefix_cache()  # cached KV entries were computed with the old weights


def engine_weight_difference(generation) -> float:
    """Largest |trainer - engine| over the token embedding rows this rank's engine holds, in the engine's dtype.

    ``VPPO_CHECK_WEIGHT_SYNC=1`` runs it after every push and logs it as ``weight_sync_max_diff`` (0 when the
    engine samples from the trainer's current weights). The embedding is compared because no engine repacks it:
    with tensor parallelism each rank's engine holds a vocabulary shard (``shard_indices``), under ZeRO-3 the
    trainer's copy is gathered first.
    """
    import contextlib

    import torch

    engine_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    layer = next(m for n, m in engine_model.named_modules() if n.endswith("embed_tokens"))
    trainer_param = next(p for n, p in generation.model.named_parameters() if n.endswith("embed_tokens.weight"))
    gather = contextlib.nullcontext()
    if hasattr(trainer_param, "ds_id"):  # a ZeRO-3 partitioned parameter
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([trainer_param])
    shard = getattr(layer, "shard_indices", None)
    with gather, torch.no_grad():
        full = trainer_param.detach()
        start, end = (shard.org_vocab_start_index, shard.org_vocab_end_index) if shard else (0, full.shape[0])
        ours = full[start:end].to(layer.weight.dtype)
        theirs = layer.weight.detach()[: end - start]
        return float((ours.float() - theirs.float()).abs().max())


def install_colocate_fixes(trainer) -> bool:
    """Wrap ``trainer.vllm_generation`` (colocate mode) as described above; returns whether there was one."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or generation.mode != "colocate":
        return False
    image_token_id = trainer.processing_class.image_token_id
    push = (lambda: reload_colocated_weights(generation)) if engine_on_cpu() else generation.sync_weights
    generate = generation.generate

    check = os.environ.get("VPPO_CHECK_WEIGHT_SYNC") == "1"

    def sync_weights() -> None:
        push()
        generation.llm.llm_engine.reset_encoder_cache()
        if check:  # every rank checks its own engine's shard; the log shows the largest difference of any
            import torch

            local = torch.tensor([engine_weight_difference(generation)], device=trainer.accelerator.device)
            metrics = trainer._metrics["train"]
            metrics["weight_sync_max_diff"].append(float(trainer.accelerator.gather(local).max()))
            metrics["weight_sync_checks"].append(1.0)

    def generate_from_unexpanded(prompts, images, num_generations, profiler=None):
        sent = prompts if images is None else [collapse_image_runs(ids, image_token_id) for ids in prompts]
        prompt_ids, completion_ids, logprobs, logprob_token_ids = generate(sent, images, num_generations, profiler)
        problem = first_mismatch(prompts, prompt_ids, image_token_id)
        if problem:
            raise RolloutPromptMismatch(f"vLLM rollout: {problem}")
        return prompt_ids, completion_ids, logprobs, logprob_token_ids

    generation.sync_weights = sync_weights
    generation.generate = generate_from_unexpanded
    return True
