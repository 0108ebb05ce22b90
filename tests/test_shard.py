"""shard_indices: equal counts, full cover, disjoint real samples, seeded per-epoch order."""

from __future__ import annotations

import numpy as np
import pytest

from lmdb_io import shard_indices


@pytest.mark.parametrize("world_size", range(1, 9))
@pytest.mark.parametrize("length", [1, 5, 7, 10, 245, 1001])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_cover_disjointly_with_equal_counts(length: int, world_size: int, shuffle: bool) -> None:
    shards = [shard_indices(length, rank, world_size, epoch=3, seed=11, shuffle=shuffle) for rank in range(world_size)]
    per_rank = -(-length // world_size)
    assert all(len(s) == per_rank for s in shards)
    real = np.concatenate([s.indices[~s.is_padding] for s in shards])
    assert sorted(real.tolist()) == list(range(length))  # every sample once: full cover, disjoint
    padding = np.concatenate([s.indices[s.is_padding] for s in shards])
    assert len(padding) == per_rank * world_size - length
    assert all(0 <= i < length for i in padding.tolist())
    assert sum(s.num_real for s in shards) == length


def test_order_changes_per_epoch_and_is_fixed_by_seed() -> None:
    a = shard_indices(1000, 1, 4, epoch=0, seed=7).indices
    assert np.array_equal(a, shard_indices(1000, 1, 4, epoch=0, seed=7).indices)
    assert not np.array_equal(a, shard_indices(1000, 1, 4, epoch=1, seed=7).indices)
    assert not np.array_equal(a, shard_indices(1000, 1, 4, epoch=0, seed=8).indices)


def test_no_shuffle_is_round_robin_in_order() -> None:
    assert shard_indices(10, 1, 3, shuffle=False).indices.tolist() == [1, 4, 7, 0]
    assert shard_indices(10, 1, 3, shuffle=False).is_padding.tolist() == [False, False, False, True]


@pytest.mark.parametrize("args", [(0, 0, 1), (10, 2, 2), (10, -1, 2), (10, 0, 0)])
def test_rejects_bad_arguments(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        shard_indices(*args)


@pytest.mark.parametrize("length, world_size, batch", [(245, 2, 16), (153, 3, 8), (10, 4, 4), (5, 8, 2)])
def test_epoch_plan_whole_batches(length: int, world_size: int, batch: int) -> None:
    from lmdb_io.shard import epoch_plan

    train = [epoch_plan(length, r, world_size, 1, 0, True, batch, drop_last=True) for r in range(world_size)]
    assert len({len(p) for p in train}) == 1 and all(len(p) % batch == 0 for p in train)
    evals = [epoch_plan(length, r, world_size, 0, 0, False, batch, drop_last=False) for r in range(world_size)]
    assert len({len(p) for p in evals}) == 1 and all(len(p) % batch == 0 for p in evals)
    counted = np.concatenate([p.indices[~p.is_padding] for p in evals])
    assert sorted(counted.tolist()) == list(range(length))


def test_epoch_plan_skip_resumes_mid_epoch() -> None:
    from lmdb_io.shard import epoch_plan

    full = epoch_plan(245, 1, 2, 3, 7, True, 16, drop_last=True)
    resumed = epoch_plan(245, 1, 2, 3, 7, True, 16, drop_last=True, skip=48)
    assert resumed.indices.tolist() == full.indices[48:].tolist()
    with pytest.raises(ValueError, match="whole number of batches"):
        epoch_plan(245, 1, 2, 3, 7, True, 16, drop_last=True, skip=10)
