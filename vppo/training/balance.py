"""The official rollout layout across data-parallel ranks: equal-size partitions balanced by sequence length.

Before any pass over a rollout, the official trainer (veRL's ``_balance_batch``) splits the whole rollout's rows
into one equal-size partition per rank whose summed lengths (prompt + response tokens) are as equal as the
largest differencing method (Karmarkar-Karp) makes them; each partition keeps its rows in index order, and rank
r trains on partition r, cut into mini-batches and micro-batches in that order. The rows of a prompt group end
up spread over the ranks, so a rank's micro-batch (TAS's mu group) mixes many prompts.

- :func:`balanced_partitions`: the partitioning, a pure function of the lengths (ties broken as veRL breaks them).
- :func:`balance_rollout`: moves each rank's rows to the rank whose partition holds them (lengths gathered, then
  one scatter per source rank over ``torch.distributed``: a rank receives only its own partition's rows).

On one process the single partition is every row in order: the layout is unchanged.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class _Subset:
    """Rows of one future partition: (row, length) pairs in the order they joined, and their length sum."""

    members: list[tuple[int, int]] = field(default_factory=list)
    total: int = 0

    def key(self) -> tuple:
        # larger sum first; then more rows; then the members themselves (veRL's order, for identical ties)
        return self.total, len(self.members), self.members

    def joined(self, other: "_Subset") -> "_Subset":
        return _Subset(self.members + other.members, self.total + other.total)


class _Partial:
    """k subsets, largest first; the heap pops the partial solution with the widest spread first."""

    def __init__(self, subsets: list[_Subset]):
        self.subsets = sorted(subsets, key=_Subset.key, reverse=True)

    @property
    def spread(self) -> int:
        return self.subsets[0].total - self.subsets[-1].total

    def __lt__(self, other: "_Partial") -> bool:
        if self.spread != other.spread:
            return self.spread > other.spread
        return self.subsets[0].key() > other.subsets[0].key()

    def combined(self, other: "_Partial") -> "_Partial":
        """Largest of one with smallest of the other: the differencing step."""
        return _Partial([a.joined(b) for a, b in zip(self.subsets, reversed(other.subsets))])


def balanced_partitions(lengths: Sequence[int], k: int) -> list[list[int]]:
    """``k`` partitions of ``range(len(lengths))``, each of ``len(lengths) / k`` rows, with near-equal length
    sums (largest differencing method, equal-size variant); partition r is rank r's, its rows in index order.

    lengths: [N] ints (a row's valid prompt + response tokens); N must be a multiple of k.
    """
    n = len(lengths)
    if k < 1 or n < k or n % k:
        raise ValueError(f"{n} rows do not split into {k} equal partitions")
    ranked = sorted((int(length), row) for row, length in enumerate(lengths))
    heap: list[_Partial] = []
    for start in range(0, n, k):  # k rows of similar length: one per partition
        heapq.heappush(heap, _Partial([_Subset([(row, length)], length) for length, row in ranked[start:start + k]]))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        heapq.heappush(heap, first.combined(second))
    return [sorted(row for row, _ in subset.members) for subset in heap[0].subsets]


def row_lengths(batch: dict[str, Any]) -> list[int]:
    """Valid prompt + response tokens of every row of a TRL rollout dict (the official balancing length)."""
    return (batch["prompt_mask"].sum(1) + batch["completion_mask"].sum(1)).tolist()


def balance_rollout(batch: dict[str, Any], rank: int, world: int, pad_token_id: int, dist=None) -> dict[str, Any]:
    """This rank's partition of the rollout held across ``world`` ranks (each rank passes its own rows, ranks in
    order form the global row order): the rows of partition ``rank`` of :func:`balanced_partitions` over every
    row's length, in global order, on this rank's device. Every rank holds the same number of rows before and
    after. Only lengths are gathered; each row travels once, to the rank that trains on it (one
    ``scatter_object_list`` per source rank, CPU tensors). ``dist``: ``torch.distributed`` (initialised)."""
    if world == 1:
        return batch
    from vppo.training.batch import concat_rollouts, select_rows

    dist = dist or torch.distributed
    local = row_lengths(batch)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, local)
    if len({len(x) for x in everyone}) != 1:
        raise RuntimeError(f"rollout balancing: ranks hold {[len(x) for x in everyone]} rows; they must be equal")
    n_local = len(local)
    partitions = balanced_partitions([length for lengths in everyone for length in lengths], world)
    device = batch["completion_ids"].device
    on_cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    start = rank * n_local
    pieces_for = []
    for partition in partitions:
        rows = [g - start for g in partition if start <= g < start + n_local]
        pieces_for.append(select_rows(on_cpu, rows) if rows else None)
    received = []
    for source in range(world):
        out: list[Any] = [None]
        dist.scatter_object_list(out, pieces_for if source == rank else None, src=source)
        if out[0] is not None:
            received.append(out[0])
    merged = concat_rollouts(received, pad_token_id)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in merged.items()}


def keep_rank_rows(batch: dict[str, Any], rank: int, world: int, pad_token_id: int) -> dict[str, Any]:
    """The rows each rank generated, as they are: whole prompt groups per rank (the layout before balancing)."""
    return batch


#: How a rollout's rows are laid out across ranks before the mini-batch split (recipe key ``rollout_layout``):
#: ``balanced`` (the official run) or ``grouped`` (each rank keeps its own prompt groups; the same on one process).
ROLLOUT_LAYOUTS = {"balanced": balance_rollout, "grouped": keep_rank_rows}
DEFAULT_ROLLOUT_LAYOUT = "balanced"
