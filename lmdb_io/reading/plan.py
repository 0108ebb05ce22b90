"""``RankPlan``: the one answer to "which samples does this rank read, in which order, in epoch e".

Both loaders follow it (the torch DataLoader's sampler and the DALI external source), so they see the
same samples in the same order. The layout is ``torch.utils.data.DistributedSampler``'s: the epoch's
global order (a seeded permutation, or 0..length-1), padded to a multiple of the world size by wrapping
around to its start, dealt out round-robin: global position ``p`` goes to rank ``p % world_size``. Every
rank gets the same count, so no rank waits at a collective for one that ran out.

A resume skips a prefix of the epoch's *global* order (``skip`` positions): after ``k`` steps of batch
``B`` on ``W`` ranks that is ``k * B * W``, whatever world size or batch size the resumed run uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from lmdb_io.trainable import BadRecordError

Loaded = TypeVar("Loaded")


@dataclass(frozen=True)
class EpochOrder:
    """One rank's samples for one epoch, cut to whole batches.

    ``indices[i]`` is a dataset index; ``padding[i]`` is True where it is a wrapped repeat that only
    evens out the ranks or the last batch: evaluation must not count it.
    """

    indices: np.ndarray
    padding: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


def global_order(length: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The dataset order of one epoch, identical on every rank: a seeded permutation or 0..length-1."""
    if not shuffle:
        return np.arange(length, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    return rng.permutation(length).astype(np.int64, copy=False)


@dataclass(frozen=True)
class RankPlan:
    """Everything that decides one rank's reading order, for every epoch of a run.

    ``rank`` is the global rank (the position among all processes of all nodes), never the local rank:
    two nodes using local ranks would read the same samples. Training (``drop_last``) drops each rank's
    remainder so every rank runs the same number of steps; evaluation pads the last batch by wrapping
    around the rank's samples and marks those entries as padding. ``skip`` positions of the global order
    of ``first_epoch`` were consumed before a resume; later epochs start from the beginning.
    """

    length: int
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    first_epoch: int = 0
    skip: int = 0
    _cache: dict[int, EpochOrder] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ValueError(f"cannot plan an empty dataset (length {self.length})")
        if self.world_size <= 0 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, not {self.batch_size}")
        if not 0 <= self.skip <= self.length:
            raise ValueError(f"skip ({self.skip}) must be between 0 and the dataset length ({self.length})")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _cache={})

    def _skipped(self, epoch: int) -> int:
        return self.skip if epoch == self.first_epoch else 0

    def _per_rank(self, epoch: int) -> int:
        return -(-(self.length - self._skipped(epoch)) // self.world_size)

    def num_batches(self, epoch: int) -> int:
        """Batches this rank (and every other) runs in ``epoch``."""
        per_rank = self._per_rank(epoch)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def for_epoch(self, epoch: int) -> EpochOrder:
        """This rank's samples for an absolute epoch number (the last one is cached)."""
        cached = self._cache.get(epoch)
        if cached is not None:
            return cached
        order = global_order(self.length, epoch, self.seed, self.shuffle)
        remaining = order[self._skipped(epoch) :]
        per_rank = self._per_rank(epoch)
        wrap = per_rank * self.world_size - len(remaining)  # padding wraps around to the epoch's start
        padded = np.concatenate([remaining, np.resize(order, wrap)])
        positions = np.arange(self.rank, len(padded), self.world_size, dtype=np.int64)
        indices, padding = padded[positions], positions >= len(remaining)
        n = self.num_batches(epoch) * self.batch_size
        if self.drop_last:
            indices, padding = indices[:n], padding[:n]
        else:  # the last batch wraps around this rank's samples
            padding = np.concatenate([padding, np.ones(n - len(indices), dtype=bool)])
            indices = np.resize(indices, n)
        result = EpochOrder(indices=indices, padding=padding)
        self._cache.clear()
        self._cache[epoch] = result
        return result


class NoGoodSample(RuntimeError):
    """Every sample of a rank's epoch order is a bad record: nothing can replace one."""


def replacement_positions(position: int, length: int) -> Iterator[int]:
    """Where a loader looks for the sample it delivers at ``position`` of an epoch order of ``length``:
    the position itself, then, if its record is bad, the next ones, wrapping around to the start (a
    loader that finds every one bad raises ``no_good_sample``)."""
    for k in range(length):
        yield (position + k) % length


def first_good(
    order: EpochOrder,
    position: int,
    load: Callable[[int], Loaded],
    bad: set[int],
    on_bad: Callable[[int, str], None] | None = None,
) -> tuple[int, Loaded]:
    """(position delivered, ``load``'s result) for ``position`` of ``order``: its sample when the record is
    good, else the next good one (``replacement_positions``). ``load(index)`` raises ``BadRecordError`` for
    a bad record, which joins ``bad`` (skipped from then on) and goes to ``on_bad`` with its reason."""
    for candidate in replacement_positions(position, len(order)):
        index = int(order.indices[candidate])
        if index in bad:
            continue
        try:
            return candidate, load(index)
        except BadRecordError as exc:
            bad.add(index)
            if on_bad is not None:
                on_bad(index, str(exc))
    raise no_good_sample(len(order))


def no_good_sample(length: int) -> NoGoodSample:
    return NoGoodSample(f"all {length} samples of this rank's epoch are bad records: nothing to train on")
