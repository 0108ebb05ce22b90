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
from lmdb_io.reading.augment import TrainView, train_view
from lmdb_io.reading.plan import EpochOrder, RankPlan, first_good
from lmdb_io.reading.presets import TrainPreset
from lmdb_io.reading.resolution import ResolutionSchedule
from lmdb_io.trainable import BadRecordError, read_checked

Sample = tuple[np.ndarray, ...]


def window_arrays(view: TrainView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crop window and flip as the train graph takes them: ``anchor`` (x, y) and ``shape`` (width,
    height) in float32 pixels, and ``mirror`` (int32)."""
    return (
        np.array((view.left, view.top), dtype=np.float32),
        np.array((view.width, view.height), dtype=np.float32),
        np.array(view.flip, dtype=np.int32),
    )


class PlanSource:
    """``source(sample_info) -> (encoded image uint8[N], label int64, dataset index int64, padding uint8)``.

    ``sample_info.idx_in_epoch`` is mapped through the plan of epoch ``first_epoch + sample_info.epoch_idx``:
    the order the torch loader follows too. ``StopIteration`` at the end of the plan ends DALI's epoch;
    every rank's plan has the same number of whole batches. Subclasses say where the bytes come from.

    A bad record (checksum, header, too many pixels by its image header, or listed in ``bad`` by the
    loader after DALI failed to decode it) is replaced by the next good sample of the epoch's order and
    delivered as padding (``lmdb_io.reading.bad_records``); the loader sees the replacement in the indices.

    With ``crops`` (a train preset) each sample also carries its crop window and flip, decided by
    ``lmdb_io.reading.augment.train_view`` from (the plan's seed, the epoch, the delivered sample's dataset
    index) and the image's header size: ``anchor`` (x, y) and ``shape`` (width, height), float32 pixels, and
    ``mirror`` (int32), so the graph draws nothing and a resumed run or the torch loader
    gives each sample the same crop. A record without a size in its header is then bad before decoding.
    With a ``resolution`` schedule (progressive resizing) each sample also carries its epoch's crop size
    (float32, ``size``): the train graph resizes to it, so the size changes with the epoch without
    rebuilding the pipeline. ``output_names`` names the outputs in order.
    """

    def __init__(
        self, plan: RankPlan, resolution: ResolutionSchedule | None = None, crops: TrainPreset | None = None
    ) -> None:
        if plan.num_batches(plan.first_epoch) <= 0:
            raise ValueError(
                f"{plan.length} images over {plan.world_size} ranks give no whole batch of {plan.batch_size} "
                f"per rank; lower the batch size"
            )
        self.plan, self.resolution, self.crops = plan, resolution, crops
        self.bad: set[int] = set()  # records found bad (undecodable, as the loader reports, or failing the checks)

    @property
    def output_names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = ("encoded", "labels", "indices", "padding")
        names += ("anchor", "shape", "mirror") if self.crops is not None else ()
        return names + (("size",) if self.resolution is not None else ())

    def read(self, index: int) -> tuple[Any, int]:
        """(encoded bytes as a buffer, label) of dataset sample ``index``."""
        raise NotImplementedError

    def describe(self, index: int) -> tuple[str, str]:
        """(key, source path) naming sample ``index`` in reports."""
        return str(index), ""

    def _checked(self, index: int) -> tuple[Any, int, tuple[int, int] | None]:
        """(bytes, label, header size where crops are drawn for it) of a record passing the checks made
        before decoding; ``BadRecordError`` for one that fails them."""
        return read_checked(self.read, index, sized=self.crops is not None)

    def problem(self, index: int) -> str | None:
        """Why record ``index`` is bad by the checks made before decoding, or None."""
        try:
            self._checked(index)
        except BadRecordError as exc:
            return str(exc)
        return None

    def choose(self, order: EpochOrder, position: int) -> tuple[int, Any, int, tuple[int, int] | None]:
        """(position of the sample delivered for ``position``, its bytes, its label, its header size where
        crops are drawn for it): itself if good, else the next good one of ``order``."""
        chosen, (payload, label, size) = first_good(order, position, self._checked, self.bad)
        return chosen, payload, label, size

    def __call__(self, sample_info: Any) -> Sample:
        epoch = self.plan.first_epoch + sample_info.epoch_idx
        order = self.plan.for_epoch(epoch)
        i = sample_info.idx_in_epoch
        if i >= len(order):
            raise StopIteration
        chosen, payload, label, size = self.choose(order, i)
        index = int(order.indices[chosen])
        sample: Sample = (
            np.frombuffer(payload, dtype=np.uint8),
            np.array(label, dtype=np.int64),
            np.array(index, dtype=np.int64),
            np.array(order.padding[i] or chosen != i, dtype=np.uint8),
        )
        if self.crops is not None:
            assert size is not None
            sample += window_arrays(train_view(self.crops, self.plan.seed, epoch, index, size))
        if self.resolution is not None:
            sample += (np.array(self.resolution.for_epoch(epoch), dtype=np.float32),)
        return sample


class LMDBSource(PlanSource):
    """An lmdb_io database; bytes come zero-copy from the map, checksum verified."""

    def __init__(
        self,
        db: ImageDatabase | str | os.PathLike,
        plan: RankPlan,
        *,
        verify: bool = True,
        resolution: ResolutionSchedule | None = None,
        crops: TrainPreset | None = None,
    ) -> None:
        self.db = db if isinstance(db, ImageDatabase) else ImageDatabase(db, verify=verify)
        if len(self.db) != plan.length:
            raise ValueError(f"the plan is for {plan.length} samples, {self.db.path} holds {len(self.db)}")
        super().__init__(plan, resolution, crops)

    def read(self, index: int) -> tuple[memoryview, int]:
        return self.db.read(index)

    def describe(self, index: int) -> tuple[str, str]:
        return self.db.key(index).decode(), self.db.paths()[index]


class MemorySource(PlanSource):
    """Encoded images and labels held in this process (copied into each Python worker when parallel)."""

    def __init__(
        self,
        payloads: Sequence[np.ndarray],
        labels: Sequence[int],
        plan: RankPlan,
        *,
        resolution: ResolutionSchedule | None = None,
        crops: TrainPreset | None = None,
    ) -> None:
        if len(payloads) != len(labels) or len(payloads) != plan.length:
            raise ValueError(f"{len(payloads)} images, {len(labels)} labels, a plan for {plan.length} samples")
        self.payloads, self.labels = list(payloads), list(labels)
        super().__init__(plan, resolution, crops)

    @classmethod
    def from_database(cls, path: str | os.PathLike, plan: RankPlan, crops: TrainPreset | None = None) -> MemorySource:
        """Every record's encoded bytes read once (checksums verified) from an lmdb_io database."""
        db = ImageDatabase(path, verify=True)
        payloads = [np.frombuffer(db.read(i)[0], dtype=np.uint8).copy() for i in range(len(db))]
        return cls(payloads, db.targets.tolist(), plan, crops=crops)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        return self.payloads[index], self.labels[index]
