"""The exact-KL dependency pass: the paper's KL(pi(.|s_t, I) || pi(.|s_t, I')) over the whole vocabulary at every
response position, in the trainer, without ever holding [B, T, V] logits (``dependency_estimator: kl``).

Where the two full distributions come from. TRL's log-prob pass returns the sampled token's log-prob only: its
fused LM head projects the final hidden states tile by tile and never returns logits. A forward hook on the
language backbone (the module TRL's fused forward runs before its head) sees those final hidden states; the
ones at the positions that predict the response tokens ([b, T, H], H = 3584 for 7B against V = 152064) are
all the KL needs. Per micro-batch of ``per_device_train_batch_size`` rows, in rollout order:

1. the real-image pass, TRL's own (its sampled-token log-probs are the old log-probs, as on the k3 path);
   the hook keeps a copy of its response hidden states;
2. the masked-image pass, TRL's own; its hook takes the KL the moment the masked hidden states exist, before
   TRL's head runs: :func:`vppo.algorithm.full_kl_dependency` with chunk callables that apply the LM head to
   a chunk of positions of both passes (logits / sampling temperature, as TRL scores the k3 log-probs).

Cost against k3: the same two forward passes per micro-batch (no extra forward), plus two LM-head projections
of the response positions (the KL's own; each under 8% of a forward's FLOPs at 7B: the head's 0.55B of the
language model's ~7B parameters, on the response positions only); TRL's head
still scores the masked pass (its sampled-token log-probs are unused here).
Memory: the real pass's response hidden states are held through the masked forward until its KL is taken
(b * T * H in the model's dtype: 117 MB at 8 x 2048 x 3584 bf16), and the KL works on at most
:data:`KL_CHUNK_BYTES` at a time; the figures measured against the k3 path are in ``bench/bench_dependency.py``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F

from vppo.algorithm import full_kl_dependency
from vppo.training.batch import select_rows

#: The KL's working set per chunk of positions: the size of the logits tile of TRL's fused log-prob head (4096
#: positions x 32768 vocabulary entries, bf16), the k3 path's own peak on GPU, so the KL never needs more.
KL_CHUNK_BYTES = 4096 * 32768 * 2


def kl_bytes_per_position(vocab: int, logits_dtype: torch.dtype) -> int:
    """Bytes one position costs inside :func:`full_kl_dependency`: the LM head's output row in ``logits_dtype``
    plus three float32 rows (its float32 copy while the log-softmax of the other is made, and both log-softmaxes)."""
    return vocab * (torch.empty(0, dtype=logits_dtype).element_size() + 3 * 4)


def kl_chunk_positions(vocab: int, logits_dtype: torch.dtype) -> int:
    """Positions per KL chunk so that one chunk fits :data:`KL_CHUNK_BYTES` (at least one)."""
    return max(1, KL_CHUNK_BYTES // kl_bytes_per_position(vocab, logits_dtype))


@contextmanager
def response_hidden_states(backbone: torch.nn.Module, response_width: int, consume: Callable[[torch.Tensor], None]):
    """While active, every forward of ``backbone`` hands ``consume`` its final hidden states at the positions
    that predict the ``response_width`` response tokens: [b, response_width, H] (position i predicts token i+1,
    as in TRL's fused head). The tensor is a view into the backbone's output: copy it to keep it."""
    def hook(module, args, output):
        consume(output.last_hidden_state[:, -response_width - 1:-1])

    handle = backbone.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def full_lm_head(head: torch.nn.Module):
    """(weight [V, H], bias [V] or None) of the LM head, whole even where ZeRO-3 or FSDP shard it."""
    from torch.distributed.tensor import DTensor
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    weight, bias = head.weight, head.bias
    with maybe_gather_lm_head_ctx(weight, bias):
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
            bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
        yield weight, bias


def kl_from_hidden(real: torch.Tensor, masked: torch.Tensor, response_mask: torch.Tensor, head: torch.nn.Module,
                   temperature: float) -> torch.Tensor:
    """Per-token KL(real || masked) [b, T] float32 (0 on padding) from the final hidden states [b, T, H] of the
    real- and masked-image passes: logits = LM head(hidden) / temperature, a chunk of valid positions at a time."""
    with full_lm_head(head) as (weight, bias):
        def logits_of(hidden: torch.Tensor):
            flat = hidden.reshape(-1, hidden.shape[-1])
            return lambda rows: F.linear(flat.index_select(0, rows.to(flat.device)).to(weight.device), weight,
                                         bias).float().div_(temperature)

        chunk = kl_chunk_positions(weight.shape[0], weight.dtype)
        return full_kl_dependency(logits_of(real), logits_of(masked), response_mask, chunk_tokens=chunk)


def exact_kl_pass(trainer, batch: dict, masked_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(old log-probs [B, T], exact-KL dependency [B, T]) of a rollout, one micro-batch at a time (see the module
    doc). ``trainer`` is the :class:`~vppo.training.trainer.VPPOTrainer`; ``masked_pixels`` the rollout's
    masked images as ``pixel_values``. The old log-probs are TRL's, on the same micro-batches as the k3 path."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    backbone, head = model.base_model, model.get_output_embeddings()
    n_rows, width = batch["completion_ids"].shape
    size = trainer.args.per_device_train_batch_size
    masked_batch = {**batch, "pixel_values": masked_pixels}
    old, dependency = [], []
    for start in range(0, n_rows, size):
        rows = list(range(start, min(start + size, n_rows)))
        real, blind = select_rows(batch, rows), select_rows(masked_batch, rows)
        kept: list[torch.Tensor] = []
        with trainer.timer.phase("old_logp"), response_hidden_states(backbone, width, lambda h: kept.append(h.clone())):
            old.append(trainer.rollout_logps(real, real["pixel_values"]))
        held = {"real": kept[0] if len(kept) == 1 else torch.cat(kept)}
        kept.clear()
        mask, done = real["completion_mask"], []

        def take_kl(masked_hidden: torch.Tensor) -> None:
            # TRL may cut a micro-batch into smaller forwards: each hook call covers the next rows
            first = sum(d.shape[0] for d in done)
            rows_here = slice(first, first + masked_hidden.shape[0])
            done.append(kl_from_hidden(held["real"][rows_here], masked_hidden, mask[rows_here], head,
                                       trainer.temperature))
            if rows_here.stop == mask.shape[0]:
                held.clear()  # freed before TRL's head scores the masked pass: that phase costs what k3's does

        with trainer.timer.phase("masked_pass"), response_hidden_states(backbone, width, take_kl):
            trainer.rollout_logps(blind, blind["pixel_values"])
        dependency.append(torch.cat(done))
    return torch.cat(old), torch.cat(dependency)
