"""Per-sample DALI ``external_source`` callbacks over one rank's ``RankPlan``: from an lmdb_io database
(``LMDBSource``) or from encoded images held in memory (``MemorySource``, which isolates the source's cost
in benchmarks).

Neither imports torch or PIL, so DALI's spawned Python workers start fast. ``LMDBSource`` pickles as its
plan and the database path: each worker opens the database through lmdb_io's shared per-process
Environment on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmdb_io.database import ImageDatabase
from loaders.plan import RankPlan

Sample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class PlanSource:
    """``source(sample_info) -> (encoded image uint8[N], label int64, dataset index int64, padding uint8)``.

    ``sample_info.idx_in_epoch`` is mapped through the plan of epoch ``first_epoch + sample_info.epoch_idx``:
    the order the torch loader follows too. ``StopIteration`` at the end of the plan ends DALI's epoch;
    every rank's plan has the same number of whole batches. Subclasses say where the bytes come from.
    """

    def __init__(self, plan: RankPlan) -> None:
        if plan.num_batches(plan.first_epoch) <= 0:
            raise ValueError(
                f"{plan.length} images over {plan.world_size} ranks give no whole batch of {plan.batch_size} "
                f"per rank; lower the batch size"
            )
        self.plan = plan

    def read(self, index: int) -> tuple[Any, int]:
        """(encoded bytes as a buffer, label) of dataset sample ``index``."""
        raise NotImplementedError

    def __call__(self, sample_info: Any) -> Sample:
        order = self.plan.for_epoch(self.plan.first_epoch + sample_info.epoch_idx)
        i = sample_info.idx_in_epoch
        if i >= len(order):
            raise StopIteration
        index = int(order.indices[i])
        payload, label = self.read(index)
        return (
            np.frombuffer(payload, dtype=np.uint8),
            np.array(label, dtype=np.int64),
            np.array(index, dtype=np.int64),
            np.array(order.padding[i], dtype=np.uint8),
        )


class LMDBSource(PlanSource):
    """An lmdb_io database; bytes come zero-copy from the map, checksum verified."""

    def __init__(self, db: ImageDatabase | str | os.PathLike, plan: RankPlan, *, verify: bool = True) -> None:
        self.db = db if isinstance(db, ImageDatabase) else ImageDatabase(db, verify=verify)
        if len(self.db) != plan.length:
            raise ValueError(f"the plan is for {plan.length} samples, {self.db.path} holds {len(self.db)}")
        super().__init__(plan)

    def read(self, index: int) -> tuple[memoryview, int]:
        return self.db.read(index)


class MemorySource(PlanSource):
    """Encoded images and labels held in this process (copied into each Python worker when parallel)."""

    def __init__(self, payloads: Sequence[np.ndarray], labels: Sequence[int], plan: RankPlan) -> None:
        if len(payloads) != len(labels) or len(payloads) != plan.length:
            raise ValueError(f"{len(payloads)} images, {len(labels)} labels, a plan for {plan.length} samples")
        self.payloads, self.labels = list(payloads), list(labels)
        super().__init__(plan)

    @classmethod
    def from_database(cls, path: str | os.PathLike, plan: RankPlan) -> MemorySource:
        """Every record's encoded bytes read once (checksums verified) from an lmdb_io database."""
        db = ImageDatabase(path, verify=True)
        payloads = [np.frombuffer(db.read(i)[0], dtype=np.uint8).copy() for i in range(len(db))]
        return cls(payloads, db.targets.tolist(), plan)

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.payloads)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        return self.payloads[index], self.labels[index]
