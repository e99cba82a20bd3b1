"""One trainer for every method preset: TRL's GRPOTrainer with DAPO's online filtering and VPPO's TGF/TAS.

What is TRL's and what is ours:
- TRL: data loading (RepeatSampler), generation (transformers or vLLM), prompt/vision encoding, reward calls,
  the fused per-token log-prob head (:meth:`_get_per_token_logps_and_entropies`), the training loop,
  checkpointing, accelerate/DeepSpeed/FSDP.
- Ours (overrides): :meth:`_prepare_inputs` builds each rollout batch: generation rounds with dynamic
  sampling refill, the old log-prob pass (after filtering, so dropped groups cost none), the masked-image
  pass (scored by the preset's estimator, :data:`vppo.training.dependency.DEPENDENCY_PASSES`: k3 or the exact
  KL), GRPO advantages, and the mini-batch layout that TAS needs; :meth:`_compute_loss` is
  :func:`vppo.algorithm.policy_loss` with :func:`vppo.algorithm.vppo_weights` (all maths lives there).

Data order: every generation round (the first of a rollout and each dynamic-sampling refill) takes the next
prompts of one seeded stream (:func:`vppo.training.batch.data_order`), as the official trainer takes the next
batches of its data loader; the stream position is saved in every checkpoint (:class:`DataCursor`).

Mini-batch layout: the rollout's rows are first spread over the ranks as the official trainer does (equal-size
partitions balanced by sequence length, :mod:`vppo.training.balance`; on one process, every row in order); a
rank's rows, in their order, are cut into ``steps_per_generation`` micro-batches; micro-batch k is consumed by the k-th training step of the
rollout, so update u owns micro-batches [u*GA, (u+1)*GA). The TGF mask and TAS alpha are computed once per
update, before any chunking: min/max over the update's rows (docs/protocol.md §3; rank-local as in the official code)
and TAS's mu over each run of ``tas_group_responses`` consecutive rows (the official device micro-batch), so
the micro-batch size is a memory setting only. Each micro-batch carries its rows' mask and alpha and its
update's global valid-token count / world size as loss denominator, so gradient accumulation plus
data-parallel averaging gives the token-mean over the update mini-batch.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, TrainerState
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from vppo.algorithm import MethodPreset, dynamic_sampling_keep, grpo_advantages, policy_loss
from vppo.errors import InputError
from vppo.modeling import masked_pixel_values
from vppo.training.balance import DEFAULT_ROLLOUT_LAYOUT, ROLLOUT_LAYOUTS
from vppo.training.batch import (VISION_KEYS, concat_rollouts, data_order, micro_batch_rows, offloaded, on_device,
                                 select_rows, update_rows)
from vppo.training.dependency import DEPENDENCY_PASSES, mask_row_images, rollout_weights
from vppo.training.metrics import REDUCERS, PhaseTimer, loss_columns, loss_metrics, reduce_metric, sync_cuda
from vppo.training.optimizer_rules import OfficialOptimizerRules
from vppo.training.rewards import GradingReward

logger = logging.getLogger(__name__)

class SamplingCapError(InputError, RuntimeError):
    """Dynamic sampling reached its safety cap of generation rounds without filling the rollout batch (the data,
    grader or cap need a look; the run's checkpoints stay in its work dir)."""


class ResumeError(InputError, RuntimeError):
    """A checkpoint cannot be resumed exactly (it lacks the data-stream position)."""


class DataCursor(TrainerCallback, ExportableState):
    """How many prompts of the data stream this run has drawn; saved with every checkpoint's trainer state."""

    def __init__(self, prompts_drawn: int = 0):
        self.prompts_drawn = int(prompts_drawn)

    def state(self) -> dict:
        return {"args": {"prompts_drawn": self.prompts_drawn}, "attributes": {}}


class VPPOTrainer(OfficialOptimizerRules, GRPOTrainer):
    """GRPOTrainer whose rollout and loss follow ``preset`` (grpo, dapo, vppo, ablations).

    preset: a :class:`vppo.catalog.MethodPreset` (its ``entropy_coef`` is the coefficient of mean(-logp) in the
    loss, kept as ``entropy_penalty``);
    max_sampling_rounds: safety cap on generation rounds per rollout batch for dynamic sampling (None: no cap,
    as the official run; reaching it raises :class:`SamplingCapError`);
    reward: a :class:`GradingReward` (the mathruler grader unless a test steers it);
    tas_group_responses: consecutive responses of an update over which TAS's mu is averaged (the recipe key);
    rollout_layout: how the rollout's rows are spread over the ranks first (:data:`vppo.training.balance.ROLLOUT_LAYOUTS`).

    The interface of the measurement code (the dependency passes of :mod:`vppo.training.dependency` and
    :mod:`vppo.training.exact_kl`, :mod:`vppo.training.gradient_variance`) is the public methods
    :meth:`next_examples`, :meth:`scored_rollout`, :meth:`rollout_logps` and :meth:`policy_logps`, plus the
    attributes ``preset``, ``tas_group_responses``, ``masking_params``, ``timer`` and TRL's own (``args``, ``model``,
    ``accelerator``, ``_metrics`` with what the rollouts logged); our other underscored names are the training loop's.
    """

    def __init__(self, *, preset: MethodPreset, tas_group_responses: int,
                 max_sampling_rounds: int | None = None, reward: GradingReward | None = None,
                 masking_params: dict | None = None, rollout_layout: str = DEFAULT_ROLLOUT_LAYOUT, **kwargs):
        args = kwargs["args"]
        if rollout_layout not in ROLLOUT_LAYOUTS:
            raise ValueError(f"VPPOTrainer: rollout_layout {rollout_layout!r} is not one of {sorted(ROLLOUT_LAYOUTS)}")
        if int(tas_group_responses) < 1:
            raise ValueError(f"VPPOTrainer: tas_group_responses must be >= 1, got {tas_group_responses}")
        if preset.dependency_estimator not in DEPENDENCY_PASSES:
            raise ValueError(f"method {preset.name}: unknown dependency estimator {preset.dependency_estimator!r}; "
                             f"the trainer has {sorted(DEPENDENCY_PASSES)}")
        if args.beta != 0.0 or args.num_iterations != 1:
            raise ValueError("VPPOTrainer: the published objective has no reference model (beta=0) and one pass "
                             f"over each rollout (num_iterations=1); got beta={args.beta}, "
                             f"num_iterations={args.num_iterations}")
        if args.use_vllm and args.vllm_importance_sampling_correction:
            raise ValueError("VPPOTrainer: set vllm_importance_sampling_correction=False (the official objective "
                             "has no vLLM/trainer importance-sampling correction)")
        self.grading = reward or GradingReward()
        super().__init__(reward_funcs=[self.grading], **kwargs)
        if args.use_vllm:
            from vppo.training.vllm_colocate import install_colocate_fixes

            install_colocate_fixes(self)  # unexpanded image placeholders for vLLM, CPU weight reload, cache reset
        self.preset = preset
        self.entropy_penalty = float(preset.entropy_coef)
        self.tas_group_responses = int(tas_group_responses)
        self.rollout_layout = rollout_layout
        self.max_sampling_rounds = None if max_sampling_rounds is None else max(int(max_sampling_rounds), 1)
        self.cursor = DataCursor()
        self.add_callback(self.cursor)  # so that _save_checkpoint stores its state
        self.masking_params = dict(masking_params or {})
        self.timer = PhaseTimer()
        self.masked_pass_calls = 0  # how many rollouts ran the masked-image pass (tests read it)
        self._defer_old_logps = False
        self._tokens_since_log = 0.0
        self.init_update_guard()
        self._log_clock: float | None = None
        dump = os.environ.get("VPPO_DUMP_ROLLOUTS")
        self.dump_dir = Path(dump) if dump else None

    # ------------------------------------------------------------------ rollout

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        # Inside a generation round TRL would score every sampled row; we score only the rows that survive
        # dynamic sampling. Returning None is what TRL itself does when it needs no old log-probs.
        if self._defer_old_logps:
            return None, None, None
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        if self._log_clock is None:
            self._log_clock = time.perf_counter()
        spg = self.args.steps_per_generation
        if self._step % spg == 0 or self._buffered_inputs is None:
            self._buffered_inputs = None  # the previous rollout is consumed: free it before generating the next
            # TRL's loader sets the number of steps; the prompts come from the data stream (see the module doc)
            self._buffered_inputs = self._build_rollout(self.next_examples(len(generation_batch)))
            if self.dump_dir is not None:
                self._dump_rollout()
        return on_device(self._buffered_inputs[self._step % spg], self.accelerator.device)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint:
            saved = TrainerState.load_from_json(str(Path(resume_from_checkpoint) / "trainer_state.json"))
            cursor = saved.stateful_callbacks.get(type(self.cursor).__name__)
            if cursor is None:
                raise ResumeError(f"{resume_from_checkpoint}: no data-stream position in trainer_state.json "
                                  "(a checkpoint from an older version; start a new --work-dir)")
            self.cursor.prompts_drawn = int(cursor["args"]["prompts_drawn"])
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _dump_rollout(self) -> None:
        """This rank's micro-batches of the rollout starting at the current step, exactly as the loss will see them
        (``VPPO_DUMP_ROLLOUTS=DIR``: ``DIR/step<N>-rank<R>.pt``), so that a distributed run can be replayed on one
        process and compared update by update (tests/vllm_tier/test_distributed_zero3.py)."""
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        pieces = [{k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in piece.items()}
                  for piece in self._buffered_inputs]
        torch.save(pieces, self.dump_dir / f"step{self.state.global_step}-rank{self.accelerator.process_index}.pt")

    def next_examples(self, n_rows: int) -> list[dict]:
        """This process's share (``n_rows`` rows, ``n_rows / num_generations`` prompts) of the next global batch of
        the data stream, each prompt repeated ``num_generations`` times; the stream position advances.

        Every process draws once per generation round (rounds are collective), so the stream position is the
        same everywhere: the global batch is split into consecutive per-process slices, as TRL splits its own.
        """
        local = n_rows // self.num_generations
        world = self.accelerator.num_processes
        start = self.cursor.prompts_drawn + self.accelerator.process_index * local
        rows = data_order(len(self.train_dataset), self.args.seed, start, local)
        self.cursor.prompts_drawn += local * world
        return [self.train_dataset[i] for i in rows for _ in range(self.num_generations)]

    def _any_process(self, flag: bool) -> bool:
        return bool(self.accelerator.gather(torch.tensor([int(flag)], device=self.accelerator.device)).sum() > 0)

    def _sample_until_full(self, examples: list[dict]):
        """Generation rounds until the batch holds len(examples)/n kept groups; refills come from the data stream.

        Kept groups are taken in order and those beyond the batch size are discarded, as in the official code.
        """
        n = self.num_generations
        groups_needed = len(examples) // n
        parts, grades_seen = [], []
        filtered = rounds = 0
        batch_examples = examples
        while True:
            self._defer_old_logps = True
            try:
                with self.timer.phase("generation"):
                    out = self._generate_and_score_completions(batch_examples)
            finally:
                self._defer_old_logps = False
            grades = self.grading.take()
            if len(grades) != len(batch_examples):
                raise RuntimeError(f"reward: graded {len(grades)} responses for {len(batch_examples)} rows")
            if groups_needed > 0:  # rounds a full rank only joins (collectives) do not count in its metrics
                grades_seen += grades
            n_groups = len(batch_examples) // n
            if self.preset.dynamic_sampling:
                keep = dynamic_sampling_keep(torch.tensor([g.accuracy for g in grades]),
                                             [i // n for i in range(len(batch_examples))]).keep.tolist()
            else:
                keep = [True] * n_groups
            kept = [g for g in range(n_groups) if keep[g]][:groups_needed]
            filtered += sum(not k for k in keep) if groups_needed > 0 else 0
            if kept:
                rows = [g * n + j for g in kept for j in range(n)]
                parts.append((offloaded(select_rows(out, rows)), [batch_examples[r] for r in rows],
                              [grades[r] for r in rows]))
            del out  # the round's filtered rows are not kept anywhere, and its kept ones are in host memory
            groups_needed -= len(kept)
            rounds += 1
            if not self._any_process(groups_needed > 0):
                break
            if self.max_sampling_rounds is not None and rounds >= self.max_sampling_rounds:
                raise SamplingCapError(
                    f"dynamic sampling: the rollout batch of step {self.state.global_step} is still "
                    f"{groups_needed} prompt group(s) short on process {self.accelerator.process_index} after "
                    f"{rounds} generation rounds (dynamic_sampling_max_rounds={self.max_sampling_rounds}): almost "
                    "every group is all right or all wrong; check the data and grader, or raise the cap "
                    "(null: no cap, as the official run)")
            batch_examples = self.next_examples(len(examples))
        batch = concat_rollouts([part for part, _, _ in parts], self._tokenizer.pad_token_id)
        row_examples = [ex for _, exs, _ in parts for ex in exs]
        row_grades = [g for _, _, gs in parts for g in gs]
        rewards = torch.tensor([g.accuracy for g in row_grades], dtype=torch.float32)
        batch["advantages"] = grpo_advantages(rewards, [i // n for i in range(len(row_grades))]).to(
            self.accelerator.device)
        self._record_rollout_metrics(grades_seen, filtered, rounds)
        return batch, row_examples

    def rollout_logps(self, batch: dict, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Log-probs [B, T] of the sampled completion tokens of a rollout ``batch`` (TRL's keys: prompt_ids /
        prompt_mask [B, P], completion_ids / completion_mask [B, T], vision keys) under the current policy, with
        ``pixel_values`` [patches, dim] in place of the batch's own (the masked-image pass passes masked ones).
        In the per-device batches of the training arguments; call it under ``torch.no_grad()``."""
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        vision = {k: batch[k] for k in VISION_KEYS if k in batch and k != "pixel_values"}
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, mask, batch["completion_ids"].size(1), batch_size=self.args.per_device_train_batch_size,
            pixel_values=pixel_values, **vision)
        return logps

    def _build_rollout(self, examples: list[dict]) -> list[dict]:
        batch = ROLLOUT_LAYOUTS[self.rollout_layout](self.scored_rollout(examples), self.accelerator.process_index,
                                                     self.accelerator.num_processes, self._tokenizer.pad_token_id)
        return self._layout(batch)

    def scored_rollout(self, examples: list[dict]) -> dict:
        """One rollout batch of ``examples`` (from :meth:`next_examples`) before the mini-batch layout: sampled
        and graded (dynamic sampling refills included), TRL's rollout keys (completion_ids / completion_mask
        [B, T], ...) with GRPO ``advantages`` [B], and, where the preset needs them, ``old_per_token_logps`` and
        the ``dependency`` of every token [B, T]. B = len(examples) rows, all of groups dynamic sampling kept."""
        batch, row_examples = self._sample_until_full(examples)
        batch = on_device(batch, self.accelerator.device)  # for the passes below (vLLM sleeps through them)
        off_policy = self.args.gradient_accumulation_steps % self.args.steps_per_generation != 0
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.preset.needs_masked_pass:
                with self.timer.phase("masked_pass"):
                    masked = mask_row_images([ex.get("images") for ex in row_examples], self.preset.masking,
                                             self.args.seed, self.state.global_step, self.accelerator.process_index,
                                             **self.masking_params)
                    pixels = masked_pixel_values(self.processing_class.image_processor, masked, batch["image_grid_thw"])
                    pixels = pixels.to(batch["pixel_values"].device, batch["pixel_values"].dtype)
                # the old log-probs come with the dependency: the exact KL needs the real pass's hidden states
                batch["old_per_token_logps"], batch["dependency"] = DEPENDENCY_PASSES[self.preset.dependency_estimator](
                    self, batch, pixels)
                self.masked_pass_calls += 1
            elif off_policy:
                with self.timer.phase("old_logp"):
                    batch["old_per_token_logps"] = self.rollout_logps(batch, batch.get("pixel_values"))
        return batch

    def _layout(self, batch: dict) -> list[dict]:
        """Micro-batches of the rows in order, each row with its TGF mask and TAS alpha, and each update's loss
        denominator."""
        n_rows = batch["completion_ids"].shape[0]
        micro = micro_batch_rows(list(range(n_rows)), self.args.steps_per_generation)
        updates = update_rows(micro, self.args.gradient_accumulation_steps)
        mask = batch["completion_mask"]
        local_tokens = torch.stack([mask[rows].sum() for rows in updates]).float()
        tokens = self.accelerator.gather(local_tokens).view(-1, len(updates)).sum(0)
        denominators = (tokens / self.accelerator.num_processes).clamp_min(1.0)
        if self.preset.needs_masked_pass:
            self._update_weights(batch, updates)
        out = []
        for k, rows in enumerate(micro):
            piece = offloaded(select_rows(batch, rows))  # to the device again in _prepare_inputs, one step at a time
            piece["loss_denominator"] = denominators[k // self.args.gradient_accumulation_steps]
            out.append(piece)
        return out

    def _update_weights(self, batch: dict, updates: list[list[int]]) -> None:
        """Adds the rows' TGF mask ``tgf_mask`` [B, T] and TAS factor ``tas_alpha`` [B] (where the preset uses
        them), each update's rows weighed together: min/max over the update, mu per group of
        ``tas_group_responses`` consecutive rows of it."""
        token_mask, alpha = rollout_weights(self.preset, batch["dependency"], batch["completion_mask"], updates,
                                            self.tas_group_responses)
        if token_mask is not None:
            batch["tgf_mask"] = token_mask
        if alpha is not None:
            batch["tas_alpha"] = alpha

    def _record_rollout_metrics(self, grades, filtered: int, rounds: int) -> None:
        device = self.accelerator.device
        local = torch.tensor([sum(g.accuracy for g in grades), sum(g.format for g in grades), len(grades),
                              filtered], dtype=torch.float64, device=device)
        acc, fmt, count, filtered_all = self.accelerator.gather(local).view(-1, 4).sum(0).tolist()
        metrics = self._metrics["train"]
        metrics["accuracy"].append(acc / max(count, 1))
        metrics["format"].append(fmt / max(count, 1))
        metrics["filtered_groups"].append(filtered_all)
        metrics["sampling_rounds"].append(float(rounds))

    # ------------------------------------------------------------------ loss

    def policy_logps(self, model, inputs: dict, compute_entropy: bool = False):
        """(log-probs [B, T], entropies [B, T] or None) of the sampled completion tokens of ``inputs`` (one
        micro-batch of the layout, TRL's rollout keys) under ``model``, with gradient: the loss's forward pass."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        vision = {k: inputs[k] for k in VISION_KEYS if k in inputs}
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, ids, attention, inputs["completion_ids"].size(1), compute_entropy=compute_entropy, **vision)
        return logps, entropies

    def _compute_loss(self, model, inputs):
        logps, entropies = self.policy_logps(model, inputs, compute_entropy=True)
        mask = inputs["completion_mask"]
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        token_mask, alpha = inputs.get("tgf_mask"), inputs.get("tas_alpha")  # from _layout, per update
        loss, stats = policy_loss(
            logps, old, inputs["advantages"], mask, token_mask=token_mask, clip_low=self.epsilon_low,
            clip_high=self.epsilon_high, dual_clip=self.preset.dual_clip, entropy_coef=self.entropy_penalty,
            alpha=alpha, loss_denominator=inputs["loss_denominator"])
        self._record_loss_metrics(stats, mask, inputs.get("dependency"), token_mask, alpha, entropies)
        return loss

    def _record_loss_metrics(self, stats, mask, dependency, token_mask, alpha, entropies) -> None:
        local = loss_columns(stats, mask, dependency, token_mask, alpha, entropies)
        rows = self.accelerator.gather(local).view(-1, local.numel())
        logged = loss_metrics(rows, self.args.gradient_accumulation_steps, dependency is not None, alpha is not None)
        self._tokens_since_log += logged.pop("valid_tokens")
        for key, value in logged.items():
            self._metrics["train"][key].append(value)

    # ------------------------------------------------------------------ resume

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # save_pretrained writes Qwen2.5-VL under its legacy key names ("visual.*", "model.layers.*") and the
        # Trainer reloads HF-format checkpoints with a bare load_state_dict: every key misses and training
        # silently goes on from the initial weights. from_pretrained applies the key conversion.
        # (DeepSpeed resumes through its own engine; FSDP sharded state keeps module names.)
        model = self.model if model is None else model
        if self.is_fsdp_enabled or not any(Path(resume_from_checkpoint).glob("*.safetensors")):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        reference = next(model.parameters())
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=reference.dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    # ------------------------------------------------------------------ timing and logging

    def training_step(self, model, inputs, num_items_in_batch):
        start, before = time.perf_counter(), sum(self.timer.totals.values())
        loss = super().training_step(model, inputs, num_items_in_batch)
        sync_cuda()
        rollout = sum(self.timer.totals.values()) - before
        self.timer.totals["update"] += time.perf_counter() - start - rollout
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        metrics = self._metrics["train"]
        if self.model.training and "train_runtime" not in logs and self.preset.needs_masked_pass:
            # provenance of every logged dependency figure (the contract keys stay null for other methods)
            logs.update(dependency_estimator=self.preset.dependency_estimator, masking=self.preset.masking)
        if self.model.training and "train_runtime" not in logs:
            for phase, seconds in self.timer.take().items():
                metrics[f"time_{phase}_s"] = [seconds]
            now = time.perf_counter()
            elapsed = now - (self._log_clock or now)
            metrics["tokens_per_s"] = [self._tokens_since_log / elapsed if elapsed > 0 else float("nan")]
            self._tokens_since_log, self._log_clock = 0.0, now
            for key in [k for k in metrics if k in REDUCERS or k.startswith(("alpha_", "dependency_"))]:
                value = reduce_metric(key, metrics[key])
                if value is None:
                    del metrics[key]  # absent -> null in training_log.jsonl
                else:
                    metrics[key] = [value]
        super().log(logs, start_time)
