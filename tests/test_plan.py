"""RankPlan: equal counts, full cover, disjoint real samples, seeded per-epoch order, whole batches, and a
resume skip counted in global positions that holds across a change of world size or batch size."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lmdb_io.reading.plan import RankPlan


def _plans(length: int, world_size: int, batch: int = 1, **kwargs: object) -> list[RankPlan]:
    return [RankPlan(length, batch, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]


@pytest.mark.parametrize("world_size", range(1, 9))
@pytest.mark.parametrize("length", [1, 5, 7, 10, 245, 1001])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_cover_disjointly_with_equal_counts(length: int, world_size: int, shuffle: bool) -> None:
    orders = [p.for_epoch(3) for p in _plans(length, world_size, seed=11, shuffle=shuffle, drop_last=False)]
    per_rank = -(-length // world_size)
    assert all(len(o) == per_rank for o in orders)
    real = np.concatenate([o.indices[~o.padding] for o in orders])
    assert sorted(real.tolist()) == list(range(length))  # every sample once: full cover, disjoint
    padding = np.concatenate([o.indices[o.padding] for o in orders])
    assert len(padding) == per_rank * world_size - length
    assert all(0 <= i < length for i in padding.tolist())


def test_order_changes_per_epoch_and_is_fixed_by_seed() -> None:
    a = RankPlan(1000, 1, rank=1, world_size=4, seed=7).for_epoch(0).indices
    assert np.array_equal(a, RankPlan(1000, 1, rank=1, world_size=4, seed=7).for_epoch(0).indices)
    assert not np.array_equal(a, RankPlan(1000, 1, rank=1, world_size=4, seed=7).for_epoch(1).indices)
    assert not np.array_equal(a, RankPlan(1000, 1, rank=1, world_size=4, seed=8).for_epoch(0).indices)


def test_no_shuffle_is_round_robin_in_order() -> None:
    order = RankPlan(10, 1, rank=1, world_size=3, shuffle=False, drop_last=False).for_epoch(0)
    assert order.indices.tolist() == [1, 4, 7, 0]
    assert order.padding.tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(length=0, batch_size=1),
        dict(length=10, batch_size=1, rank=2, world_size=2),
        dict(length=10, batch_size=1, rank=-1, world_size=2),
        dict(length=10, batch_size=1, world_size=0),
        dict(length=10, batch_size=0),
        dict(length=10, batch_size=1, skip=11),
    ],
)
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RankPlan(**kwargs)


@pytest.mark.parametrize("length, world_size, batch", [(245, 2, 16), (153, 3, 8), (10, 4, 4), (5, 8, 2)])
def test_whole_batches(length: int, world_size: int, batch: int) -> None:
    train = [p.for_epoch(1) for p in _plans(length, world_size, batch)]
    assert len({len(o) for o in train}) == 1 and all(len(o) % batch == 0 for o in train)
    assert all(
        p.num_batches(1) * batch == len(o) for p, o in zip(_plans(length, world_size, batch), train, strict=True)
    )
    evals = [p.for_epoch(0) for p in _plans(length, world_size, batch, shuffle=False, drop_last=False)]
    assert len({len(o) for o in evals}) == 1 and all(len(o) % batch == 0 for o in evals)
    counted = np.concatenate([o.indices[~o.padding] for o in evals])
    assert sorted(counted.tolist()) == list(range(length))


def test_skip_resumes_mid_epoch_on_the_same_ranks() -> None:
    """Two steps of batch 16 on 2 ranks consumed 64 positions: each rank's order continues where it stopped."""
    full = RankPlan(245, 16, rank=1, world_size=2, seed=7, first_epoch=3).for_epoch(3)
    resumed = RankPlan(245, 16, rank=1, world_size=2, seed=7, first_epoch=3, skip=2 * 16 * 2)
    assert resumed.for_epoch(3).indices.tolist() == full.indices[32:].tolist()
    assert resumed.num_batches(3) == len(full) // 16 - 2
    assert (
        resumed.for_epoch(4).indices.tolist()
        == RankPlan(245, 16, rank=1, world_size=2, seed=7).for_epoch(4).indices.tolist()
    )


@pytest.mark.parametrize("before, after", [((4, 8), (2, 8)), ((2, 8), (3, 5)), ((1, 16), (4, 2))])
def test_skip_resumes_across_world_and_batch_size(before: tuple[int, int], after: tuple[int, int]) -> None:
    """Whatever the resumed run's world size and batch size, the epoch's samples are each trained once:
    those the interrupted run consumed, then the rest, with no overlap."""
    length, seed, steps = 245, 3, 3
    world, batch = before
    done = np.concatenate([p.for_epoch(0).indices[: steps * batch] for p in _plans(length, world, batch, seed=seed)])
    skip = steps * batch * world
    world, batch = after
    rest = [p.for_epoch(0) for p in _plans(length, world, batch, seed=seed, skip=skip)]
    trained = np.concatenate([done] + [o.indices[~o.padding] for o in rest])
    assert len(set(trained.tolist())) == len(trained)  # nothing twice
    whole_epoch = [p.for_epoch(0) for p in _plans(length, 1, 1, seed=seed)][0].indices
    assert sorted(done.tolist()) == sorted(whole_epoch[:skip].tolist())  # the skip is the global order's prefix
    dropped = length - skip - sum(int((~o.padding).sum()) for o in rest)
    assert 0 <= dropped < world * batch  # drop_last leaves less than a batch per rank untrained


def test_pickles_without_its_cache() -> None:
    plan = RankPlan(100, 4, rank=1, world_size=2, seed=5)
    plan.for_epoch(0)
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan and np.array_equal(copy.for_epoch(0).indices, plan.for_epoch(0).indices)
