"""The DALI loaders: a ``PlanSource`` (an lmdb_io database, or bytes in memory) or an ImageFolder tree
through a ``dali_pipeline`` graph, into ``Batch``es of torch tensors."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

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
from lmdb_io.reading.plan import EpochOrder
from lmdb_io.reading.presets import Preset, TrainPreset
from lmdb_io.reading.spec import ReadSpec
from lmdb_io.trainable import reason

from .batch import Batch, RunningEpoch

if TYPE_CHECKING:
    from .cpu_fallback import CpuFallback


def _to_batch(out: dict[str, Any], channels_last: bool) -> Batch:
    """One DALIGenericIterator output as a ``Batch``: images NCHW-shaped whatever the memory layout (a
    channels-last pipeline's NHWC output becomes an NCHW view in channels-last memory)."""
    images = out["images"].permute(0, 3, 1, 2) if channels_last else out["images"]
    return Batch(images, out["labels"].view(-1), out["indices"].view(-1), out["padding"].view(-1).bool())


def _batches(iterator: Iterable, channels_last: bool) -> Generator[Batch, None, None]:
    """DALIGenericIterator outputs (one pipeline) as ``Batch``es."""
    for (out,) in iterator:
        yield _to_batch(out, channels_last)


def _release_pipeline(loader: DALILoader | DALIFolderLoader) -> None:
    """The one DALI teardown: drop the loader's iterator and pipeline and shut the pipeline down (its threads
    stop); once the pipeline object is freed, DALI closes its Python worker pool (asking the workers to exit,
    then terminating them): collected here and now if a reference cycle holds it. A second call does nothing.
    """
    pipeline = getattr(loader, "pipeline", None)
    if pipeline is None:
        return
    del loader._iterator, loader.pipeline
    pipeline._shutdown()
    alive = weakref.ref(pipeline)
    del pipeline
    if alive() is not None:  # held in a reference cycle
        gc.collect()


class DALILoader:
    """Yields ``Batch``; images and labels on the pipeline's device.

    ``len()`` is the number of batches in the coming epoch (equal on every rank). Iterating again runs
    the next epoch: the source sees DALI's epoch index and follows the next epoch's plan.

    Bad records never end an epoch. The source replaces those it can tell before decoding (checksum,
    header, pixel cap). A record DALI fails to decode invalidates the pipeline: the loader then
    decode-checks, in a child process, the samples in flight (the batches the pipeline may have been
    working on) and marks the culprits bad in the source. It builds no second pipeline (after a decoding
    error DALI 2.4 may crash a later pipeline of the same process): the pipeline is shut down and the
    loader goes on at the same position, the culprits replaced, on the CPU (``CpuFallback``: the same
    samples and crops, much slower), and says so in ``needs_fresh_process``, for the trainer to continue
    the run in a fresh process. ``bad_records`` names every bad record met (index -> BadRecord).
    """

    def __init__(self, source: PlanSource, opts: PipelineOptions, preset: Preset) -> None:
        self.source, self.opts, self.preset = source, opts, preset
        self.device = torch.device("cpu") if opts.device_id is None else torch.device("cuda", opts.device_id)
        self.bad_records: dict[int, BadRecord] = {}
        self.needs_fresh_process = False  # the pipeline failed: batches now come from ``_fallback``
        self._fallback: CpuFallback | None = None
        self._epoch = source.plan.first_epoch
        self._running = RunningEpoch()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.pipeline = build_pipeline(source, opts, preset)
        self._iterator = DALIGenericIterator(
            self.pipeline,
            list(OUTPUT_NAMES),
            auto_reset=False,  # reset when the next epoch is asked for: no pipeline runs while another loader's does
            last_batch_policy=LastBatchPolicy.DROP,
            prepare_first_batch=False,
        )
        self._epochs_run = 0

    def __len__(self) -> int:
        return self.source.plan.num_batches(self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._epoch
        self._epoch += 1
        return self._running.start(self._run(epoch))

    def close(self) -> None:
        """End the epoch in progress and shut the pipeline down, its Python workers with it (they ignore
        signals to the process group). The loader cannot be iterated again; a second call does nothing."""
        self._running.close()
        _release_pipeline(self)

    def _run(self, epoch: int) -> Generator[Batch, None, None]:
        order = self.source.plan.for_epoch(epoch)
        position = 0  # the next position of this rank's epoch order to deliver
        if self._fallback is None and self._epochs_run:
            self._iterator.reset()  # the pipeline starts on this epoch only now (auto_reset off)
        self._epochs_run += 1
        while self._fallback is None:
            try:
                (out,) = next(self._iterator)
            except StopIteration:
                return
            except RuntimeError as exc:  # DALI: "Critical error in pipeline", the pipeline is now invalid
                self._name_culprits(exc, order, position)
                break  # out of the handler first: the error's traceback holds the pipeline
            batch = _to_batch(out, self.opts.channels_last)
            self._note_replacements(order, position, batch.indices.tolist())
            position += len(batch.indices)
            yield batch
        yield from self.fall_back().batches(epoch, position)

    def _note_replacements(self, order: EpochOrder, position: int, delivered: list[int]) -> None:
        """Name the records the source replaced (before decoding) in the batch at ``position``."""
        for planned, got in zip(order.indices[position : position + len(delivered)].tolist(), delivered, strict=True):
            if planned != got and planned not in self.bad_records:
                why = self.source.problem(planned) or "replaced by the source"
                self.bad_records[planned] = BadRecord(planned, *self.source.describe(planned), why)

    def _name_culprits(self, error: RuntimeError, order: EpochOrder, position: int) -> None:
        """After a pipeline error: find the undecodable records among the samples in flight and mark them
        bad (the fallback then replaces them). An error with no culprit there is raised."""
        in_flight = range(position, min(len(order), position + (self.opts.prefetch + 2) * self.opts.batch_size))
        found = self._undecodable(order, in_flight)
        if not found:
            raise error
        for index, why in found:
            self._met(index, why)

    def fall_back(self) -> CpuFallback:
        """Shut the pipeline down (its threads and Python workers stop) and deliver from the CPU from now
        on (``needs_fresh_process``): after this loader's failure, or another pipeline's of the process,
        as DALI is not run again where one failed. A database's loader only; a second call does nothing."""
        if self._fallback is not None:
            return self._fallback
        if not isinstance(self.source, LMDBSource):
            raise TypeError("only a database's DALI loader falls back to the CPU")
        from .cpu_fallback import CpuFallback

        _release_pipeline(self)
        self._fallback = CpuFallback(
            self.source.db.path,
            self.source.plan,
            self.preset,
            self.source.resolution,
            known_bad=self.source.bad,
            on_bad=self._met,
            device=self.device,
            dtype=torch.float16 if self.opts.fp16_output else torch.float32,
            channels_last=self.opts.channels_last,
            verify=self.source.db.verify,
        )
        self.needs_fresh_process = True
        return self._fallback

    def _met(self, index: int, why: str) -> None:
        if index not in self.bad_records:
            self.bad_records[index] = BadRecord(index, *self.source.describe(index), why)

    def _undecodable(self, order: EpochOrder, positions: range) -> list[tuple[int, str]]:
        """(index, reason) of the records DALI's decoders reject among those the source delivers at
        ``positions``, checked in a spawned child with this pipeline's decoders (on its GPU: nvJPEG and the
        hardware decoder too, so a record only the GPU rejects is found); each one found is marked bad in
        the source, and the replacements are checked too."""
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
            found_now = undecodable_records(self.source.db, todo, device_id=self.opts.device_id)
            bad = [(i, reason(why)) for i, why in found_now]
            if not bad:
                return found
            found += bad
            self.source.bad.update(i for i, _ in bad)


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
        self._running = RunningEpoch()

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[Batch]:
        return self._running.start(_batches(self._iterator, self.opts.channels_last))

    def close(self) -> None:
        """End the epoch in progress and shut the pipeline down; a second call does nothing."""
        self._running.close()
        _release_pipeline(self)


def _device_id(device: torch.device) -> int | None:
    """The CUDA device a pipeline runs on (None: DALI's CPU operators)."""
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise ValueError(f"DALI runs on the CPU or a CUDA device, not {device}")
    return torch.cuda.current_device() if device.index is None else device.index


def _fp16_output(dtype: torch.dtype) -> bool:
    """Whether the pipeline hands float16 (for either half-precision dtype: DALI has no bfloat16, and bf16
    autocast takes float16 images) or float32."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"DALI hands float32 or float16 images, not {dtype}")
    return dtype != torch.float32


def make_dali_loader(
    spec: ReadSpec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    dali_threads: int | None = None,
    py_workers: int | None = None,
    prefetch: int | None = None,
    hw_decoder_load: float | None = None,
    fused_cpu_resize: bool = True,
) -> DALILoader | DALIFolderLoader:
    """The DALI loader reading ``spec`` for one rank, on ``device`` (a CUDA device: mixed decoding and GPU
    operators; the CPU: DALI's CPU operators).

    A database goes through ``DALILoader`` in ``RankPlan`` order (train drops the shard's remainder, val
    pads and masks; resumes mid-epoch). An ImageFolder tree goes through DALI's file reader
    (``DALIFolderLoader``: its own sharding and shuffle, no resume mid-epoch, ``first_epoch`` and ``skip``
    not followed, no resolution schedule).

    Images come in ``dtype`` (float32, or float16 for either half-precision dtype), NCHW-shaped, in
    channels-last memory with ``channels_last``. How it runs (``None``: ``PipelineOptions``' default):

    - ``dali_threads``: DALI's CPU threads;
    - ``py_workers``: Python processes running a database's source (0: in the pipeline's thread; default
      on a GPU 4 for train and 2 for val, else 0; a tree has none);
    - ``prefetch``: batches queued ahead (a database's val: 1 by default, as it idles between evaluations
      holding what it has);
    - ``hw_decoder_load``: the share of train JPEGs sent to the GPU's hardware decoder;
    - ``fused_cpu_resize``: the CPU train graph resizes with the fused operator where it builds.
    """
    device_id = _device_id(torch.device(device))
    database = spec.is_database()
    if not database and spec.resolution is not None:
        raise ValueError("a resolution schedule needs a database: DALI's file reader has no per-epoch source")
    if not database:
        py_workers = None  # the file reader runs no Python source
    elif py_workers is None:
        py_workers = (4 if spec.train else 2) if device_id is not None else 0
    if database and prefetch is None and not spec.train:
        prefetch = 1
    chosen: dict[str, Any] = dict(
        num_threads=dali_threads, py_workers=py_workers, prefetch=prefetch, hw_decoder_load=hw_decoder_load
    )
    opts = PipelineOptions(
        batch_size=spec.batch_size,
        device_id=device_id,
        seed=spec.rank_seed,
        fp16_output=_fp16_output(dtype),
        channels_last=channels_last,
        fused_cpu_resize=fused_cpu_resize,
        **{name: value for name, value in chosen.items() if value is not None},
    )
    if not database:
        return DALIFolderLoader(os.fspath(spec.path), opts, spec.preset(), spec.rank, spec.world_size)
    db = ImageDatabase(spec.path, verify=spec.verify)
    preset = spec.preset()
    crops = preset if isinstance(preset, TrainPreset) else None  # each sample's crop and flip from the source
    source = LMDBSource(db, spec.plan(len(db)), resolution=spec.resolution, crops=crops)
    source.bad.update(spec.known_bad)
    return DALILoader(source, opts, preset)
