"""The official rollout layout across ranks (veRL's ``_balance_batch`` in huaixuheqing/VPPO-RL): equal-size
Karmarkar-Karp partitions by sequence length, checked against a transcription of
``verl/utils/seqlen_balancing.py`` on fixed lengths, and the row exchange on 2 real gloo processes."""

from __future__ import annotations

import heapq
import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vppo.training.balance import balance_rollout, balanced_partitions, row_lengths
from vppo.training.batch import concat_rollouts, select_rows

from trl.trainer.utils import split_pixel_values_by_grid


# ------------------------------------------------------------------ transcription of the official partitioning

class _Bucket:
    """seqlen_balancing.Set: items (index, length) in joining order and their sum."""

    def __init__(self):
        self.sum, self.items = 0, []

    def __lt__(self, other):
        if self.sum != other.sum:
            return self.sum < other.sum
        if len(self.items) != len(other.items):
            return len(self.items) < len(other.items)
        return self.items < other.items


class _Candidate:
    """seqlen_balancing.State: k buckets kept in decreasing order."""

    def __init__(self, items, k):
        self.k, self.buckets = k, [_Bucket() for _ in range(k)]
        for bucket, (idx, length) in zip(self.buckets, items):
            bucket.items.append((idx, length))
            bucket.sum += length
        self.buckets = sorted(self.buckets, reverse=True)

    def merge(self, other):
        for i in range(self.k):
            mine, theirs = self.buckets[i], other.buckets[self.k - 1 - i]
            mine.items += theirs.items
            mine.sum += theirs.sum
        self.buckets = sorted(self.buckets, reverse=True)

    def spread(self):
        return self.buckets[0].sum - self.buckets[-1].sum

    def __lt__(self, other):
        if self.spread() != other.spread():
            return self.spread() > other.spread()
        return self.buckets[0] > other.buckets[0]


def official_partitions(lengths, k):
    """karmarkar_karp(equal_size=True), then _check_and_sort_partitions (each partition sorted)."""
    ordered = sorted((length, i) for i, length in enumerate(lengths))
    queue = []
    for offset in range(0, len(ordered), k):
        heapq.heappush(queue, _Candidate([(i, length) for length, i in ordered[offset:offset + k]], k))
    while len(queue) > 1:
        first, second = heapq.heappop(queue), heapq.heappop(queue)
        first.merge(second)
        heapq.heappush(queue, first)
    return [sorted(idx for idx, _ in bucket.items) for bucket in queue[0].buckets]


FIXED_LENGTHS = [412, 388, 1290, 640, 640, 640, 233, 2048, 977, 501, 501, 812, 1290, 96, 1500, 640,
                 388, 412, 2048, 2048, 301, 299, 300, 300, 1024, 1023, 1025, 700, 700, 88, 1999, 640]


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_partitions_equal_the_official_ones_on_fixed_lengths(k):
    ours = balanced_partitions(FIXED_LENGTHS, k)
    assert ours == official_partitions(FIXED_LENGTHS, k)
    assert sorted(i for p in ours for i in p) == list(range(len(FIXED_LENGTHS)))
    assert all(len(p) == len(FIXED_LENGTHS) // k and p == sorted(p) for p in ours)


def test_partitions_equal_the_official_ones_on_a_grouped_rollout_with_ties():
    """48 prompt groups of 8 responses (a 7B rollout's shape at 1/8 scale) over 8 ranks: same partitions, and
    each rank's rows span many prompts (the TAS group of the official run mixes prompts)."""
    rng = random.Random(0)
    lengths = [rng.choice([300, 512, 512, 900, 2048, 2048]) + rng.randrange(0, 40) for _ in range(48 * 8)]
    ours = balanced_partitions(lengths, 8)
    assert ours == official_partitions(lengths, 8)
    first_micro_batch = ours[0][:16]
    assert len({i // 8 for i in first_micro_batch}) >= 8  # not 2 whole prompt groups, as a grouped layout
    with pytest.raises(ValueError, match="equal partitions"):
        balanced_partitions(lengths[:-1], 8)


# ------------------------------------------------------------------ the row exchange on 2 processes

N_LOCAL = 8


def _rollout(rank: int) -> dict:
    """A TRL-shaped rollout of N_LOCAL rows: left-padded prompts, right-padded completions, one image per row
    (4 or 16 patches), per-row scalars; widths differ between ranks."""
    g = torch.Generator().manual_seed(rank)
    p_width, c_width = 6 + rank, 5 + 2 * rank
    p_len = torch.randint(2, p_width + 1, (N_LOCAL,), generator=g)
    c_len = torch.randint(1, c_width + 1, (N_LOCAL,), generator=g)
    cols_p, cols_c = torch.arange(p_width), torch.arange(c_width)
    prompt_mask = (cols_p >= p_width - p_len[:, None]).long()
    completion_mask = (cols_c < c_len[:, None]).long()
    grids = torch.tensor([[1, 2, 2] if (rank + i) % 2 else [1, 4, 4] for i in range(N_LOCAL)])
    return {"prompt_ids": torch.randint(10, 99, (N_LOCAL, p_width), generator=g) * prompt_mask,
            "prompt_mask": prompt_mask,
            "completion_ids": torch.randint(10, 99, (N_LOCAL, c_width), generator=g) * completion_mask,
            "completion_mask": completion_mask,
            "dependency": torch.rand(N_LOCAL, c_width, generator=g) * completion_mask,
            "mm_token_type_ids": torch.cat([prompt_mask, torch.zeros_like(completion_mask)], 1),
            "pixel_values": torch.randn(int(grids.prod(-1).sum()), 3, generator=g),
            "image_grid_thw": grids, "num_images": [1] * N_LOCAL,
            "advantages": torch.randn(N_LOCAL, generator=g), "num_items_in_batch": torch.tensor(7)}


def _rows(batch: dict) -> list[tuple]:
    """Every row's content without padding: comparable across padding widths."""
    split = split_pixel_values_by_grid(batch)
    out = []
    for i in range(batch["prompt_ids"].shape[0]):
        pm, cm = batch["prompt_mask"][i].bool(), batch["completion_mask"][i].bool()
        out.append((batch["prompt_ids"][i][pm].tolist(), batch["completion_ids"][i][cm].tolist(),
                    batch["dependency"][i][cm].tolist(), split["pixel_values"][i].tolist(),
                    split["image_grid_thw"][i].tolist(), float(batch["advantages"][i])))
    return out


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = balance_rollout(_rollout(rank), rank, world, pad_token_id=0)
        results[rank] = _rows(mine)
    finally:
        dist.destroy_process_group()


def test_each_rank_receives_its_partition_of_the_whole_rollout():
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        with socket.socket() as probe:  # a free port: other test runs share the machine
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.start_processes(_worker, args=(world, port, results), nprocs=world, start_method="spawn")
        received = dict(results)
    whole = concat_rollouts([_rollout(r) for r in range(world)], pad_token_id=0)
    partitions = balanced_partitions(row_lengths(whole), world)
    for rank in range(world):
        assert received[rank] == _rows(select_rows(whole, partitions[rank])), rank
    assert sorted(len(p) for p in partitions) == [N_LOCAL] * world


def test_one_process_keeps_the_rollout_as_it_is():
    batch = _rollout(0)
    assert balance_rollout(batch, 0, 1, pad_token_id=0) is batch


def test_the_layout_is_a_recipe_key():
    from vppo.training.recipes import RecipeError, load_recipe

    assert load_recipe("smoke").rollout_layout is None  # null: balanced, the official layout
    assert load_recipe("smoke", {"rollout_layout": "grouped"}).rollout_layout == "grouped"
    with pytest.raises(RecipeError, match="rollout_layout"):
        load_recipe("smoke", {"rollout_layout": "shuffled"})
