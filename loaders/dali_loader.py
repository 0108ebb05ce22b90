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

from .batch import Batch
from .plan import RankPlan
from .presets import Preset, TrainPreset, preset_for


def _batches(iterator: Iterable, channels_last: bool) -> Generator[Batch, None, None]:
    """DALIGenericIterator outputs (one pipeline) as ``Batch``: images NCHW-shaped whatever the memory
    layout (a channels-last pipeline's NHWC output becomes an NCHW view in channels-last memory)."""
    for (out,) in iterator:
        images = out["images"].permute(0, 3, 1, 2) if channels_last else out["images"]
        yield Batch(images, out["labels"].view(-1), out["indices"].view(-1), out["padding"].view(-1).bool())


def _shut_down(loader: DALILoader | DALIFolderLoader) -> None:
    """End the epoch in progress and drop the loader's iterator and pipeline: with the pipeline's last
    reference gone, DALI stops its threads and closes its worker pool (asking the workers to exit, then
    terminating them). The loader cannot be iterated again; a second call does nothing."""
    if loader._current is not None:
        loader._current.close()
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
    """

    def __init__(self, source: PlanSource, opts: PipelineOptions, preset: Preset) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.source, self.opts = source, opts
        self.pipeline = build_pipeline(source, opts, preset)
        self._iterator = DALIGenericIterator(
            self.pipeline,
            list(OUTPUT_NAMES),
            auto_reset=True,
            last_batch_policy=LastBatchPolicy.DROP,
            prepare_first_batch=False,
        )
        self._epoch = source.plan.first_epoch
        self._current: Generator[Batch, None, None] | None = None

    def __len__(self) -> int:
        return self.source.plan.num_batches(self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        self._epoch += 1
        self._current = _batches(self._iterator, self.opts.channels_last)
        return self._current

    def close(self) -> None:
        """Shut the pipeline down, its Python workers with it (they ignore signals to the process group)."""
        _shut_down(self)


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
        self._current: Generator[Batch, None, None] | None = None

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[Batch]:
        self._current = _batches(self._iterator, self.opts.channels_last)
        return self._current

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
    first_epoch: int = 0,
    skip: int = 0,
    verify: bool = True,
    **options: Any,
) -> DALILoader:
    """The DALI loader over an lmdb_io database for one rank (global ``rank``): train drops the shard's
    remainder, val pads and masks. ``skip``: positions of ``first_epoch``'s global order already trained
    on (see ``RankPlan``).

    ``options`` are ``PipelineOptions`` fields (num_threads, py_workers, hw_decoder_load, ...). On a GPU
    the source runs in Python workers unless ``py_workers=0`` is given.
    """
    options.setdefault("py_workers", 4 if device_id is not None else 0)
    db = ImageDatabase(path, verify=verify)
    plan = RankPlan.for_split(len(db), batch_size, train, rank, world_size, seed, first_epoch, skip)
    source = LMDBSource(db, plan)
    opts = PipelineOptions(batch_size=batch_size, device_id=device_id, seed=seed + rank, **options)
    return DALILoader(source, opts, preset_for(train, crop, val_resize))
