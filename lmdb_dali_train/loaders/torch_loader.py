"""The torchvision loader: ImageFolderLMDB (or ImageFolder) in a DataLoader, in ``RankPlan`` order.

Its sampler follows the same ``RankPlan`` the DALI source follows, so both loaders deliver the same
samples in the same order each epoch, and the same augmentation: each training sample's crop box and flip
come from ``lmdb_io.reading.augment.train_view`` (seed, epoch, dataset index, the image's header size), as
the DALI source's do, so nothing here draws at random: a sample gets the same crop whichever worker reads
it, and a resumed run reproduces an uninterrupted one.
A bad record is replaced by the next good sample of the rank's order and reported (``lmdb_io.reading.bad_records``).

The workers are persistent (started by the first epoch, kept until ``close``) and ship uint8 crops; the loader
normalises each batch on the training device (``normalize``). Each item carries its epoch, so the workers crop
at that epoch's size (progressive resizing, ``lmdb_io.reading.resolution``) without being restarted.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Generator, Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as F

from lmdb_io import ImageFolderLMDB
from lmdb_io.dataset import decode_rgb
from lmdb_io.reading.augment import train_view
from lmdb_io.reading.bad_records import BadRecord
from lmdb_io.reading.plan import RankPlan, first_good
from lmdb_io.reading.presets import Preset, TrainPreset
from lmdb_io.reading.resolution import ResolutionSchedule
from lmdb_io.reading.spec import ReadSpec
from lmdb_io.reading.workers import ignore_stop_signals, parent_garbage_frozen, stop_signals_blocked
from lmdb_io.trainable import BadRecordError, read_checked, reason

from .batch import Batch, RunningEpoch
from .normalize import DeviceNormalizer


def open_image_dataset(path: str | os.PathLike, *, lmdb: bool, verify: bool = True) -> ImageFolderLMDB | ImageFolder:
    """An lmdb_io database as ImageFolderLMDB (``verify``: checksums checked as records are read), or a
    plain ImageFolder tree."""
    return ImageFolderLMDB(path, verify=verify) if lmdb else ImageFolder(os.fspath(path))


class PlanSampler(Sampler):
    """Yields ``(epoch, position)`` for each position of this rank's epoch order, in order (the item names
    its sample through the plan, and where a bad record's replacement is looked for); call ``set_epoch``
    before each epoch."""

    def __init__(self, plan: RankPlan) -> None:
        self.plan = plan
        self.epoch = plan.first_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.for_epoch(self.epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, position) for position in range(len(self.plan.for_epoch(epoch))))


# A sample: image, label, dataset index, padding, and the bad records (index, reason) it replaced
Item = tuple[Any, int, int, bool, list[tuple[int, str]]]


class PlannedItems(Dataset):
    """Wraps an image dataset: item ``(epoch, position)`` -> (uint8 CHW image, label, index,
    padding, bad records met): for training, the delivered sample's ``train_view`` box resized to the epoch's
    crop size with torchvision's ``resized_crop`` (bilinear, antialiased) and flipped where the view says; for
    validation, the preset's torchvision transform.

    A record that fails its checksum, claims too many pixels in its header, or does not decode is replaced
    by the next good sample of the rank's epoch order (``lmdb_io.reading.bad_records``); the replacement is marked
    as padding and the bad records met are handed back with it, since workers run in other processes.
    ``known_bad`` skips records already found bad: those this process met, and those the loader had found
    when the process started (persistent workers never see the loader's later findings, only their own).
    """

    def __init__(
        self,
        dataset: ImageFolderLMDB | ImageFolder,
        plan: RankPlan,
        preset: Preset,
        resolution: ResolutionSchedule | None = None,
    ) -> None:
        self.dataset, self.plan = dataset, plan
        self.preset, self.resolution = preset, resolution
        self.known_bad: set[int] = set()
        self._val = None if isinstance(preset, TrainPreset) else preset.torchvision()

    def __len__(self) -> int:
        return len(self.dataset)

    def crop_for(self, epoch: int) -> int:
        """The crop size of ``epoch``: the schedule's, else the preset's."""
        return self.preset.crop if self.resolution is None else self.resolution.for_epoch(epoch)

    def _transform(self, image: Any, index: int, epoch: int, size: tuple[int, int] | None) -> Any:
        """Validation's transform, or sample ``index``'s training view of ``epoch`` (``size``: the header's,
        else the decoded image's, which Pillow reads from the same header)."""
        if self._val is not None:
            return self._val(image)
        assert isinstance(self.preset, TrainPreset)
        view = train_view(self.preset, self.plan.seed, epoch, index, size or image.size)
        crop = self.crop_for(epoch)
        image = F.resized_crop(image, view.top, view.left, view.height, view.width, [crop, crop], antialias=True)
        return F.pil_to_tensor(F.hflip(image) if view.flip else image)

    def _load(self, index: int, epoch: int) -> tuple[Any, int]:
        """The transformed sample; ``BadRecordError`` if the record is bad (the transform is not guarded)."""
        dataset = self.dataset
        decode: Callable[[], Any]
        size = None
        if isinstance(dataset, ImageFolderLMDB):  # checksum and the header's pixel count before decoding
            # training crops for the header's size, as the DALI source does
            payload, label, size = read_checked(dataset.db.read, index, sized=self._val is None)
            decode = partial(decode_rgb, payload)
        else:
            path, label = dataset.samples[index]
            decode = partial(dataset.loader, path)
        try:
            image = decode()
        except Exception as exc:  # Pillow raises many types for broken files
            raise BadRecordError(f"does not decode with Pillow ({reason(exc)})") from None
        image = self._transform(image, index, epoch, size)
        if dataset.target_transform is not None:
            label = dataset.target_transform(label)
        return image, label

    def __getitem__(self, item: tuple[int, int]) -> Item:
        epoch, position = item
        order = self.plan.for_epoch(epoch)
        bad: list[tuple[int, str]] = []
        candidate, (image, label) = first_good(
            order,
            position,
            lambda chosen: self._load(chosen, epoch),
            self.known_bad,
            lambda i, why: bad.append((i, why)),
        )
        return image, label, int(order.indices[candidate]), bool(order.padding[position]) or candidate != position, bad


def _collate(samples: list[Item]) -> tuple[Any, ...]:
    """The default collation of (image, label, index, padding), plus the bad records met, as a list."""
    images, labels, indices, padding = default_collate([s[:4] for s in samples])
    return images, labels, indices, padding, [record for s in samples for record in s[4]]


class TorchLoader:
    """A DataLoader over one rank's plan that yields ``Batch`` on the training device (images normalised
    there, in ``dtype`` and channels-last memory when asked); each ``iter()`` runs the next epoch.

    ``dataset`` comes without a transform: ``preset`` is applied, at ``resolution``'s size of each epoch
    when given (training only).
    """

    def __init__(
        self,
        dataset: ImageFolderLMDB | ImageFolder,
        plan: RankPlan,
        preset: Preset,
        *,
        workers: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        resolution: ResolutionSchedule | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        if len(dataset) != plan.length:
            raise ValueError(f"the plan is for {plan.length} samples, the dataset holds {len(dataset)}")
        if dataset.transform is not None:
            raise ValueError("the dataset has a transform of its own; the loader applies the preset's")
        if resolution is not None and not isinstance(preset, TrainPreset):
            raise ValueError("a resolution schedule is for training; validation keeps its preset's size")
        self.plan, self.device = plan, device
        self.normalize = DeviceNormalizer(preset.mean, preset.std, device, dtype=dtype, channels_last=channels_last)
        self.sampler = PlanSampler(plan)
        self.items = PlannedItems(dataset, plan, preset, resolution)
        self.bad_records: dict[int, BadRecord] = {}  # found so far, in the order they were met
        self.loader = DataLoader(
            self.items,
            batch_size=plan.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
            collate_fn=_collate,
            persistent_workers=workers > 0,  # started by the first epoch, shut down by close()
            multiprocessing_context=multiprocessing_context if workers else None,
            worker_init_fn=ignore_stop_signals,  # SIGINT/SIGTERM to the process group are the trainer's
            # DataLoader draws each epoch's worker base seed from this, not from the global RNG
            generator=torch.Generator().manual_seed(plan.seed),
        )
        self._epoch = plan.first_epoch
        method = (
            multiprocessing_context
            or multiprocessing.get_start_method(allow_none=True)
            or multiprocessing.get_all_start_methods()[0]  # the default
        )
        self._spawns = workers > 0 and method != "fork"
        self._running = RunningEpoch()  # weakly: dropping the loader ends its persistent workers at once

    def __len__(self) -> int:
        """Batches in the coming epoch."""
        return self.plan.num_batches(self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        return self._running.start(self._batches())

    def close(self) -> None:
        """End the epoch in progress and shut the worker processes down (a later ``iter()`` starts new ones)."""
        self._running.close()
        workers, self.loader._iterator = self.loader._iterator, None  # the persistent workers' iterator
        shut_down = getattr(workers, "_shutdown_workers", None)
        if shut_down is not None:
            shut_down()

    def _batches(self) -> Generator[Batch, None, None]:
        self.sampler.set_epoch(self._epoch)
        self._epoch += 1
        self.items.known_bad.update(self.bad_records)  # workers started now begin with these
        # the workers are born ignoring stop signals, and (forked) without the parent's garbage: lmdb_io.reading.workers
        with stop_signals_blocked(spawn=self._spawns), parent_garbage_frozen():
            batches = iter(self.loader)
        for images, labels, indices, padding, bad in batches:
            for index, why in bad:
                if index not in self.bad_records:
                    self.bad_records[index] = BadRecord(index, *self._describe(index), why)
            yield Batch(self.normalize(images), labels.to(self.device, non_blocking=True), indices, padding)

    def _describe(self, index: int) -> tuple[str, str]:
        """(key, source path) of sample ``index``: the LMDB key and the path relative to the dataset root
        for a database, the path relative to the tree and the file for an ImageFolder."""
        dataset = self.items.dataset
        if isinstance(dataset, ImageFolderLMDB):
            return dataset.db.key(index).decode(), dataset.db.paths()[index]
        path = dataset.samples[index][0]
        return os.path.relpath(path, dataset.root), path


def make_torch_loader(
    spec: ReadSpec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    workers: int = 2,
    multiprocessing_context: str | None = None,
) -> TorchLoader:
    """The torchvision loader reading ``spec`` (a database or an ImageFolder tree) for one rank: train
    drops the shard's remainder, val pads and masks.

    Batches come on ``device``, images in ``dtype`` (channels-last memory with ``channels_last``).
    ``workers``: DataLoader worker processes (0: read in this process), started by
    ``multiprocessing_context`` (None: multiprocessing's default).
    """
    dataset = open_image_dataset(spec.path, lmdb=spec.is_database(), verify=spec.verify)
    loader = TorchLoader(
        dataset,
        spec.plan(len(dataset)),
        spec.preset(),
        workers=workers,
        device=torch.device(device),
        dtype=dtype,
        channels_last=channels_last,
        resolution=spec.resolution,
        multiprocessing_context=multiprocessing_context,
    )
    loader.items.known_bad.update(spec.known_bad)
    return loader
