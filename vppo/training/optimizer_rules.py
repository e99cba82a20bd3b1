"""The official actor's optimizer rules, as overrides of ``transformers.Trainer`` (mixed into
:class:`vppo.training.trainer.VPPOTrainer`): weight decay on every parameter, and an update whose global gradient
norm is not finite skipped whole (counted in the ``skipped_updates`` metric).

The mixin keeps two attributes, set by :meth:`init_update_guard`: ``_grad_norm_finite`` (the last norm the Trainer
computed) and ``_skipped_updates`` (how many updates this run skipped).
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)


class OfficialOptimizerRules:
    """``get_decay_parameter_names``, ``create_optimizer`` and ``_get_grad_norm`` of the official actor."""

    def init_update_guard(self) -> None:
        self._grad_norm_finite, self._skipped_updates = True, 0

    def get_decay_parameter_names(self, model) -> list[str]:
        # The official optimizer decays every parameter; transformers would exempt biases and norm weights.
        return [name for name, _ in model.named_parameters()]

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if getattr(optimizer, "_vppo_guarded", False) or self.is_deepspeed_enabled:
            # DeepSpeed steps inside backward, before the Trainer reads the norm, and ZeRO-3 calls this optimizer
            # once per parameter sub-group: a guard here would act on the previous update's flag. DeepSpeed itself
            # skips the whole update, on every rank, when the global gradient norm is not finite (ZeRO-3 in any
            # precision, DeepSpeed >= 0.19; tests/vllm_tier/test_distributed_zero3.py), and _get_grad_norm below
            # still counts it in `skipped_updates`.
            return optimizer
        step = optimizer.step

        def step_if_finite(*args, **kwargs):
            # The Trainer computed (and clipped with) the global gradient norm just before; as the official
            # actor, an update whose norm is inf or nan is skipped (the gradients are then zeroed as usual).
            if not self._grad_norm_finite:
                self._skipped_updates += 1
                logger.warning("step %d: gradient norm is not finite; optimizer step skipped", self.state.global_step)
                return None
            return step(*args, **kwargs)

        optimizer.step, optimizer._vppo_guarded = step_if_finite, True
        return optimizer

    def _get_grad_norm(self, model, grad_norm=None):
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._grad_norm_finite = norm is None or math.isfinite(float(norm))
        self._metrics["train"]["skipped_updates"].append(float(not self._grad_norm_finite))
        return norm
