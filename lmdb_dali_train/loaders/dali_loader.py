"""The DALI loaders: a ``PlanSource`` (an lmdb_io database, or bytes in memory) or an ImageFolder tree
through a ``dali_pipeline`` graph, into ``Batch``es of torch tensors."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from dali_pipeline.pipelines import (
    FILE_READER_NAME,
    OUTPUT_NAMES,
    PipelineOptions,
    build_folder_pipeline,
    build_pipeline,
)
from dali_pipeline.source import LMDBSource, PlanSource
from lmdb_io.database import ImageDatabase
from lmdb_io.reading.bad_records import BadRecord
from lmdb_io.reading.plan import EpochOrder, RankPlan
from lmdb_io.reading.presets import Preset, TrainPreset, preset_for
from lmdb_io.reading.resolution import ResolutionSchedule
from lmdb_io.trainable import reason

from .batch import Batch


def _to_batch(out: dict[str, Any], channels_last: bool) -> Batch:
    """One DALIGenericIterator output as a ``Batch``: images NCHW-shaped whatever the memory layout (a
    channels-last pipeline's NHWC output becomes an NCHW view in channels-last memory)."""
    images = out["images"].permute(0, 3, 1, 2) if channels_last else out["images"]
    return Batch(images, out["labels"].view(-1), out["indices"].view(-1), out["padding"].view(-1).bool())


def _batches(iterator: Iterable, channels_last: bool) -> Generator[Batch, None, None]:
    """DALIGenericIterator outputs (one pipeline) as ``Batch``es."""
    for (out,) in iterator:
        yield _to_batch(out, channels_last)


def _shut_down(loader: DALILoader | DALIFolderLoader) -> None:
    """End the epoch in progress and drop the loader's iterator and pipeline: with the pipeline's last
    reference gone, DALI stops its threads and closes its worker pool (asking the workers to exit, then
    terminating them). The loader cannot be iterated again; a second call does nothing."""
    current = loader._current() if loader._current is not None else None
    if current is not None:
        current.close()
    loader._current = None
    if not hasattr(loader, "pipeline"):
        return
    alive = weakref.ref(loader.pipeline)
    del loader._iterator, loader.pipeline
    if alive() is not None:  # held in a reference cycle
        gc.collect()


class DALILoader:
    """Yields ``Batch``; images and labels on the pipeline's device.

    ``len()`` is the number of batches in the coming epoch (equal on every rank). Iterating again runs
    the next epoch: the source sees DALI's epoch index and follows the next epoch's plan.

    Bad records never end an epoch. The source replaces those it can tell before decoding (checksum,
    header, pixel cap). A record DALI fails to decode invalidates the pipeline: the loader then
    decode-checks, in a child process, the samples in flight (the batches the pipeline may have been
    working on), marks the culprits bad in the source, rebuilds the pipeline and goes on at the same
    position, the culprits now replaced. ``bad_records`` names every bad record met (index -> BadRecord).
    """

    def __init__(self, source: PlanSource, opts: PipelineOptions, preset: Preset) -> None:
        self.source, self.opts, self.preset = source, opts, preset
        self.bad_records: dict[int, BadRecord] = {}
        self._build()
        self._epoch = source.plan.first_epoch
        # the epoch in progress, weakly: ``_run``'s generator holds the loader, and a cycle would leave the
        # pipeline to the garbage collector, which may run in a forked child (a DataLoader worker), where
        # finalising a DALI pipeline crashes
        self._current: weakref.ref[Generator[Batch, None, None]] | None = None

    def _build(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.pipeline = build_pipeline(self.source, self.opts, self.preset)
        self._iterator = DALIGenericIterator(
            self.pipeline,
            list(OUTPUT_NAMES),
            auto_reset=True,
            last_batch_policy=LastBatchPolicy.DROP,
            prepare_first_batch=False,
        )

    def __len__(self) -> int:
        return self.source.plan.num_batches(self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._epoch
        self._epoch += 1
        current = self._run(epoch)
        self._current = weakref.ref(current)
        return current

    def close(self) -> None:
        """Shut the pipeline down, its Python workers with it (they ignore signals to the process group)."""
        _shut_down(self)

    def _run(self, epoch: int) -> Generator[Batch, None, None]:
        order = self.source.plan.for_epoch(epoch)
        position = 0  # the next position of this rank's epoch order to deliver
        while True:
            try:
                (out,) = next(self._iterator)
            except StopIteration:
                return
            except RuntimeError as exc:  # DALI: "Critical error in pipeline", the pipeline is now invalid
                self._recover(exc, epoch, order, position)
                continue
            batch = _to_batch(out, self.opts.channels_last)
            self._note_replacements(order, position, batch.indices.tolist())
            position += len(batch.indices)
            yield batch

    def _note_replacements(self, order: EpochOrder, position: int, delivered: list[int]) -> None:
        """Name the records the source replaced (before decoding) in the batch at ``position``."""
        for planned, got in zip(order.indices[position : position + len(delivered)].tolist(), delivered, strict=True):
            if planned != got and planned not in self.bad_records:
                why = self.source.problem(planned) or "replaced by the source"
                self.bad_records[planned] = BadRecord(planned, *self.source.describe(planned), why)

    def _recover(self, error: RuntimeError, epoch: int, order: EpochOrder, position: int) -> None:
        """After a pipeline error: find undecodable records among the samples in flight, mark them bad,
        rebuild the pipeline at ``position`` of ``epoch``. An error with no culprit there is raised."""
        in_flight = range(position, min(len(order), position + (self.opts.prefetch + 2) * self.opts.batch_size))
        found = self._undecodable(order, in_flight)
        if not found:
            raise error
        for index, why in found:
            self.bad_records[index] = BadRecord(index, *self.source.describe(index), why)
        self._discard_pipeline()
        self.source.restart_at(epoch, position)
        self._build()

    def _undecodable(self, order: EpochOrder, positions: range) -> list[tuple[int, str]]:
        """(index, reason) of the records DALI's CPU decoder rejects among those the source delivers at
        ``positions``; each one found is marked bad in the source, and the replacements are checked too."""
        if not isinstance(self.source, LMDBSource):
            return []
        from dali_pipeline.decode_check import undecodable_records

        found: list[tuple[int, str]] = []
        checked: set[int] = set()
        while True:
            delivered = {int(order.indices[self.source.choose(order, p)[0]]) for p in positions}
            todo = sorted(delivered - checked)
            if not todo:
                return found
            checked.update(todo)
            bad = [(i, reason(why)) for i, why in undecodable_records(self.source.db, todo)]
            if not bad:
                return found
            found += bad
            self.source.bad.update(i for i, _ in bad)

    def _discard_pipeline(self) -> None:
        """Drop the failed pipeline (its threads and Python workers stop) before a new one is built."""
        pipeline = self.pipeline
        del self._iterator, self.pipeline
        pipeline._shutdown()
        del pipeline
        gc.collect()


class DALIFolderLoader:
    """An ImageFolder tree through DALI's file reader (sharded by global rank, padded; no resume
    mid-epoch). Validation's last batch is partial, so every sample counts once."""

    def __init__(self, root: str, opts: PipelineOptions, preset: Preset, rank: int, world_size: int) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.opts = opts
        self.pipeline = build_folder_pipeline(root, opts, preset, rank, world_size)
        train = isinstance(preset, TrainPreset)
        self._iterator = DALIGenericIterator(
            self.pipeline,
            list(OUTPUT_NAMES),
            reader_name=FILE_READER_NAME,
            auto_reset=True,
            last_batch_policy=LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL,
            prepare_first_batch=False,
        )
        self._current: weakref.ref[Generator[Batch, None, None]] | None = None

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[Batch]:
        current = _batches(self._iterator, self.opts.channels_last)
        self._current = weakref.ref(current)
        return current

    def close(self) -> None:
        """Shut the pipeline down."""
        _shut_down(self)


def make_dali_loader(
    path: str | os.PathLike,
    batch_size: int,
    *,
    train: bool,
    device_id: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    crop: int = 224,
    val_resize: int = 256,
    resolution: ResolutionSchedule | None = None,
    first_epoch: int = 0,
    skip: int = 0,
    verify: bool = True,
    **options: Any,
) -> DALILoader:
    """The DALI loader over an lmdb_io database for one rank (global ``rank``): train drops the shard's
    remainder, val pads and masks. ``skip``: positions of ``first_epoch``'s global order already trained
    on (see ``RankPlan``). ``resolution``: progressive resizing (training only); without it every epoch
    crops ``crop``.

    ``options`` are ``PipelineOptions`` fields (num_threads, py_workers, hw_decoder_load, ...). On a GPU
    the source runs in Python workers unless ``py_workers=0`` is given: 4 for train, 2 for val, which
    also queues one batch ahead instead of two (it idles between evaluations, holding what it has).
    """
    options.setdefault("py_workers", (4 if train else 2) if device_id is not None else 0)
    if not train:
        options.setdefault("prefetch", 1)
    db = ImageDatabase(path, verify=verify)
    plan = RankPlan.for_split(len(db), batch_size, train, rank, world_size, seed, first_epoch, skip)
    source = LMDBSource(db, plan, resolution=resolution)
    opts = PipelineOptions(batch_size=batch_size, device_id=device_id, seed=seed + rank, **options)
    return DALILoader(source, opts, preset_for(train, crop, val_resize))
