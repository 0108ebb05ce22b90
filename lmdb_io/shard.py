"""The one definition of which samples each rank reads, in which order, in each epoch.

Both loaders (the torch DataLoader sampler and the DALI external source) call ``shard_indices``, so they
see the same samples in the same order. Layout follows ``torch.utils.data.DistributedSampler``: permute
(or not), pad to a multiple of the world size by wrapping around to the start, then deal positions out
round-robin. Every rank gets the same count, so no rank waits at a collective for one that ran out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shard:
    """One rank's reading order for one epoch.

    ``indices[i]`` is a dataset index; ``is_padding[i]`` is True where it is a wrapped repeat that only
    evens out the ranks, which evaluation must not count.
    """

    indices: np.ndarray
    is_padding: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_real(self) -> int:
        return int(len(self.indices) - np.count_nonzero(self.is_padding))


def epoch_order(length: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The dataset order of one epoch, identical on every rank: a seeded permutation or 0..length-1."""
    if not shuffle:
        return np.arange(length, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    return rng.permutation(length).astype(np.int64, copy=False)


def shard_indices(
    length: int, rank: int, world_size: int, epoch: int = 0, seed: int = 0, shuffle: bool = True
) -> Shard:
    """This rank's samples for ``epoch``: ``ceil(length / world_size)`` of them, the last ones padded.

    ``rank`` must be the global rank (the position among all processes of all nodes), never the
    local rank: two nodes using local ranks would read the same shard twice.
    """
    if length <= 0:
        raise ValueError(f"cannot shard an empty dataset (length {length})")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    per_rank = -(-length // world_size)
    total = per_rank * world_size
    order = np.resize(epoch_order(length, epoch, seed, shuffle), total)  # wraps around when total > length
    positions = np.arange(rank, total, world_size, dtype=np.int64)
    return Shard(indices=order[positions], is_padding=positions >= length)


def batches_per_epoch(length: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches each rank runs in a full epoch (the length of ``epoch_plan`` over ``batch_size``)."""
    per_rank = -(-length // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def epoch_plan(
    length: int,
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    shuffle: bool,
    batch_size: int,
    drop_last: bool,
    skip: int = 0,
) -> Shard:
    """This rank's samples for ``epoch`` cut to whole batches: what both loaders deliver, in order.

    Training (``drop_last``) drops the shard's remainder, so every rank runs the same number of steps.
    Evaluation pads the last batch by wrapping around the shard and marks those entries as padding.
    ``skip`` leaves out the first samples, already trained on before a resume (whole batches).
    """
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, not {batch_size}")
    if skip % batch_size:
        raise ValueError(f"skip ({skip}) must be a whole number of batches of {batch_size}")
    shard = shard_indices(length, rank, world_size, epoch, seed, shuffle)
    n = batches_per_epoch(length, world_size, batch_size, drop_last) * batch_size
    if drop_last:
        return Shard(indices=shard.indices[skip:n], is_padding=shard.is_padding[skip:n])
    padding = np.resize(shard.is_padding, n)
    padding[len(shard) :] = True
    return Shard(indices=np.resize(shard.indices, n)[skip:], is_padding=padding[skip:])
