"""The per-sample DALI ``external_source`` callback over this rank's shard of an lmdb_io database.

It imports neither torch nor PIL, so DALI's spawned Python workers start fast. It pickles as a few
numbers and the database path: each worker opens the database through lmdb_io's shared per-process
Environment on first use.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lmdb_io.database import ImageDatabase
from lmdb_io.shard import Shard, epoch_plan


class ShardedSource:
    """A per-sample ``external_source`` callback over one rank's ``epoch_plan`` of ``length`` samples.

    ``source(sample_info) -> (encoded image uint8[N], label int64, dataset index int64, real uint8)``.
    ``sample_info.idx_in_epoch`` is mapped through ``lmdb_io.shard.epoch_plan`` for this global rank
    and the epoch ``first_epoch + sample_info.epoch_idx``: the same order the torch loader follows.
    ``StopIteration`` at the end of the plan ends DALI's epoch; every rank's plan has the same number
    of whole batches. ``real`` is 0 for padding (wrapped repeats), which evaluation must not count.
    ``skip`` drops the first samples of the first epoch (resuming mid-epoch). Subclasses say where the
    bytes come from (``read``).
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        first_epoch: int = 0,
        skip: int = 0,
    ) -> None:
        self.length = length
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.first_epoch, self.skip = first_epoch, skip
        self._plans: dict[int, Shard] = {}
        if self.num_batches(first_epoch) <= 0:
            raise ValueError(
                f"{length} images over {world_size} ranks give no whole batch of {batch_size} per rank; "
                f"lower the batch size"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    def read(self, index: int) -> tuple[Any, int]:
        """(encoded bytes as a buffer, label) of dataset sample ``index``."""
        raise NotImplementedError

    def plan(self, epoch: int) -> Shard:
        """This rank's samples for an absolute epoch number (cached: one permutation per epoch)."""
        plan = self._plans.get(epoch)
        if plan is None:
            plan = epoch_plan(
                self.length,
                self.rank,
                self.world_size,
                epoch,
                self.seed,
                self.shuffle,
                self.batch_size,
                self.drop_last,
                self.skip if epoch == self.first_epoch else 0,
            )
            self._plans = {epoch: plan}
        return plan

    def num_batches(self, epoch: int | None = None) -> int:
        return len(self.plan(self.first_epoch if epoch is None else epoch)) // self.batch_size

    def __call__(self, sample_info: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        plan = self.plan(self.first_epoch + sample_info.epoch_idx)
        i = sample_info.idx_in_epoch
        if i >= len(plan):
            raise StopIteration
        index = int(plan.indices[i])
        payload, label = self.read(index)
        return (
            np.frombuffer(payload, dtype=np.uint8),
            np.array(label, dtype=np.int64),
            np.array(index, dtype=np.int64),
            np.array(not plan.is_padding[i], dtype=np.uint8),
        )


class LMDBSource(ShardedSource):
    """The shard of an lmdb_io database; bytes come zero-copy from the map, checksum verified."""

    def __init__(self, path: str | os.PathLike, batch_size: int, *, verify: bool = True, **kwargs: Any) -> None:
        self.db = ImageDatabase(path, verify=verify)
        super().__init__(len(self.db), batch_size, **kwargs)

    def read(self, index: int) -> tuple[memoryview, int]:
        return self.db.read(index)
