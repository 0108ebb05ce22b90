"""The DALI loader: an lmdb_io database through ``LMDBSource`` and a pipeline into torch tensors."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from lmdb_io.batch import Batch

from .pipelines import FILE_READER_NAME, OUTPUT_NAMES, PipelineOptions, build_folder_pipeline, build_pipeline
from .source import LMDBSource, ShardedSource


def _batches(iterator: Iterable, channels_last: bool) -> Iterator[Batch]:
    """DALIGenericIterator outputs (one pipeline) as ``Batch``: images NCHW-shaped whatever the memory
    layout (a channels-last pipeline's NHWC output becomes an NCHW view in channels-last memory)."""
    for (out,) in iterator:
        images = out["images"].permute(0, 3, 1, 2) if channels_last else out["images"]
        yield Batch(images, out["labels"].view(-1), out["indices"].view(-1), out["real"].view(-1).bool())


class DALILoader:
    """Yields ``lmdb_io.batch.Batch``; images and labels on the pipeline's device.

    ``len()`` is the number of batches in the coming epoch (equal on every rank). Iterating again runs
    the next epoch: the source sees DALI's epoch index and follows the next epoch's plan.
    """

    def __init__(self, source: ShardedSource, opts: PipelineOptions, train: bool) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.source, self.opts = source, opts
        self.pipeline = build_pipeline(source, opts, train)
        self._iterator = DALIGenericIterator(
            self.pipeline,
            list(OUTPUT_NAMES),
            auto_reset=True,
            last_batch_policy=LastBatchPolicy.DROP,
            prepare_first_batch=False,
        )
        self._epoch = source.first_epoch

    def __len__(self) -> int:
        return self.source.num_batches(self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        self._epoch += 1
        return _batches(self._iterator, self.opts.channels_last)


class DALIFolderLoader:
    """An ImageFolder tree through DALI's file reader (sharded by global rank, padded; no resume
    mid-epoch). Validation's last batch is partial, so every sample counts once."""

    def __init__(self, root: str, opts: PipelineOptions, train: bool, rank: int, world_size: int) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.opts = opts

        self.pipeline = build_folder_pipeline(root, opts, train, rank, world_size)
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        self._iterator = DALIGenericIterator(
            self.pipeline,
            list(OUTPUT_NAMES),
            reader_name=FILE_READER_NAME,
            auto_reset=True,
            last_batch_policy=policy,
            prepare_first_batch=False,
        )

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[Batch]:
        return _batches(self._iterator, self.opts.channels_last)


def make_dali_loader(
    path: str | os.PathLike,
    batch_size: int,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device_id: int | None = None,
    first_epoch: int = 0,
    skip: int = 0,
    verify: bool = True,
    **options: Any,
) -> DALILoader:
    """The DALI loader for one rank (global ``rank``): train drops the shard's remainder, val pads and masks.

    ``options`` are ``PipelineOptions`` fields (threads, py_workers, crop, hw_decoder_load, ...). On a
    GPU the source runs in Python workers unless ``py_workers=0`` is given.
    """
    options.setdefault("py_workers", 4 if device_id is not None else 0)
    source = LMDBSource(
        path,
        batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle=train,
        drop_last=train,
        first_epoch=first_epoch,
        skip=skip,
        verify=verify,
    )
    opts = PipelineOptions(batch_size=batch_size, device_id=device_id, seed=seed + rank, **options)
    return DALILoader(source, opts, train)
