"""The torchvision loader: ImageFolderLMDB (or ImageFolder) in a DataLoader, in ``RankPlan`` order.

Its sampler follows the same ``RankPlan`` the DALI source follows, so both loaders deliver the same
samples in the same order each epoch. Augmentation is seeded per sample from (seed, epoch, index): a
sample gets the same crop whichever worker reads it, so a resumed run reproduces an uninterrupted one.
A bad record is replaced by the next good sample of the rank's order and reported (``loaders.bad_records``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.datasets import ImageFolder

from lmdb_io import ImageFolderLMDB, is_database
from lmdb_io.dataset import decode_rgb
from lmdb_io.trainable import BadRecordError, read_checked, reason

from .bad_records import BadRecord
from .batch import Batch
from .plan import RankPlan, no_good_sample, replacement_positions
from .presets import preset_for
from .workers import ignore_stop_signals, parent_garbage_frozen, stop_signals_blocked

_CPU = torch.device("cpu")


def open_image_dataset(
    path: str | os.PathLike, transform: Callable | None = None, lmdb: bool | None = None
) -> ImageFolderLMDB | ImageFolder:
    """An lmdb_io database as ImageFolderLMDB, or a plain ImageFolder tree (``lmdb=None``: by the path)."""
    if is_database(path) if lmdb is None else lmdb:
        return ImageFolderLMDB(path, transform=transform)
    return ImageFolder(os.fspath(path), transform=transform)


class PlanSampler(Sampler):
    """Yields ``(index, padding, epoch, position)`` in the plan's order (``position``: in this rank's epoch
    order, where a bad record's replacement is looked for); call ``set_epoch`` before each epoch."""

    def __init__(self, plan: RankPlan) -> None:
        self.plan = plan
        self.epoch = plan.first_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.for_epoch(self.epoch))

    def __iter__(self) -> Iterator[tuple[int, bool, int, int]]:
        order = self.plan.for_epoch(self.epoch)
        n = len(order)
        return zip(order.indices.tolist(), order.padding.tolist(), [self.epoch] * n, range(n), strict=True)


# A sample: image, label, dataset index, padding, and the bad records (index, reason) it replaced
Item = tuple[Any, int, int, bool, list[tuple[int, str]]]


class _SeededItems(Dataset):
    """Wraps an image dataset: item ``(index, padding, epoch, position)`` -> (image, label, index, padding,
    bad records met).

    A record that fails its checksum, claims too many pixels in its header, or does not decode is replaced
    by the next good sample of the rank's epoch order (``loaders.bad_records``); the replacement is marked
    as padding and the bad records met are handed back with it, since workers run in other processes.
    ``known_bad`` (set by the loader before each epoch) skips records already found bad.
    """

    def __init__(self, dataset: ImageFolderLMDB | ImageFolder, plan: RankPlan) -> None:
        self.dataset, self.plan, self.seed = dataset, plan, plan.seed
        self.known_bad: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int) -> tuple[Any, int]:
        """The transformed sample; ``BadRecordError`` if the record is bad (the transform is not guarded)."""
        dataset = self.dataset
        if isinstance(dataset, ImageFolderLMDB):  # checksum and the header's pixel count before decoding
            payload, label = read_checked(dataset.db.read, index)
        else:
            path, label = dataset.samples[index]
        try:
            image = decode_rgb(payload) if isinstance(dataset, ImageFolderLMDB) else dataset.loader(path)
        except Exception as exc:  # Pillow raises many types for broken files
            raise BadRecordError(f"does not decode with Pillow ({reason(exc)})") from None
        if dataset.transform is not None:
            image = dataset.transform(image)
        if dataset.target_transform is not None:
            label = dataset.target_transform(label)
        return image, label

    def __getitem__(self, item: tuple[int, bool, int, int]) -> Item:
        index, padding, epoch, position = item
        order = self.plan.for_epoch(epoch)
        bad: list[tuple[int, str]] = []
        # Seeded per sample, in a forked CPU RNG, so the caller's global RNG (workers=0) is left as it was.
        # Only the CPU generator (torchvision's transforms draw from it): torch.manual_seed also seeds every
        # CUDA device and other backends, ~130 us per sample against ~1 us here. A replacement is seeded as
        # the sample it replaces.
        with torch.random.fork_rng(devices=[]):
            for candidate in replacement_positions(position, len(order)):
                chosen = index if candidate == position else int(order.indices[candidate])
                if chosen in self.known_bad:
                    continue
                torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
                try:
                    image, label = self._load(chosen)
                except BadRecordError as exc:
                    bad.append((chosen, str(exc)))
                    continue
                return image, label, chosen, padding or candidate != position, bad
        raise no_good_sample(len(order))


def _collate(samples: list[Item]) -> tuple[Any, ...]:
    """The default collation of (image, label, index, padding), plus the bad records met, as a list."""
    images, labels, indices, padding = default_collate([s[:4] for s in samples])
    return images, labels, indices, padding, [record for s in samples for record in s[4]]


class TorchLoader:
    """A DataLoader over one rank's plan that yields ``Batch`` on the training device; each ``iter()``
    runs the next epoch."""

    def __init__(
        self,
        dataset: ImageFolderLMDB | ImageFolder,
        plan: RankPlan,
        *,
        workers: int,
        device: torch.device,
        channels_last: bool = False,
        multiprocessing_context: str | None = None,
    ) -> None:
        if len(dataset) != plan.length:
            raise ValueError(f"the plan is for {plan.length} samples, the dataset holds {len(dataset)}")
        self.plan, self.device, self.channels_last = plan, device, channels_last
        self.sampler = PlanSampler(plan)
        self.items = _SeededItems(dataset, plan)
        self.bad_records: dict[int, BadRecord] = {}  # found so far, in the order they were met
        self.loader = DataLoader(
            self.items,
            batch_size=plan.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
            collate_fn=_collate,
            persistent_workers=False,
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
        self._current: Generator[Batch, None, None] | None = None

    def __len__(self) -> int:
        """Batches in the coming epoch."""
        return self.plan.num_batches(self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        self._current = self._batches()
        return self._current

    def close(self) -> None:
        """End the epoch in progress: its worker processes are shut down."""
        if self._current is not None:
            self._current.close()
            self._current = None

    def _batches(self) -> Generator[Batch, None, None]:
        self.sampler.set_epoch(self._epoch)
        self._epoch += 1
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.items.known_bad = frozenset(self.bad_records)  # workers start with this epoch's iterator
        # the workers are born ignoring stop signals, and (forked) without the parent's garbage: loaders.workers
        with stop_signals_blocked(spawn=self._spawns), parent_garbage_frozen():
            batches = iter(self.loader)
        for images, labels, indices, padding, bad in batches:
            for index, why in bad:
                if index not in self.bad_records:
                    self.bad_records[index] = BadRecord(index, *self._describe(index), why)
            yield Batch(
                images.to(self.device, non_blocking=True, memory_format=memory_format),
                labels.to(self.device, non_blocking=True),
                indices,
                padding,
            )

    def _describe(self, index: int) -> tuple[str, str]:
        """(key, source path) of sample ``index``: the LMDB key and the path relative to the dataset root
        for a database, the path relative to the tree and the file for an ImageFolder."""
        dataset = self.items.dataset
        if isinstance(dataset, ImageFolderLMDB):
            return dataset.db.key(index).decode(), dataset.db.paths()[index]
        path = dataset.samples[index][0]
        return os.path.relpath(path, dataset.root), path


def make_torch_loader(
    path: str | os.PathLike,
    batch_size: int,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    workers: int = 2,
    device: torch.device = _CPU,
    crop: int = 224,
    val_resize: int = 256,
    channels_last: bool = False,
    first_epoch: int = 0,
    skip: int = 0,
    lmdb: bool | None = None,
    multiprocessing_context: str | None = None,
) -> TorchLoader:
    """The torchvision loader for one rank: train drops the shard's remainder, val pads and masks.

    ``skip``: positions of ``first_epoch``'s global order already trained on (see ``RankPlan``).
    """
    dataset = open_image_dataset(path, preset_for(train, crop, val_resize).torchvision(), lmdb)
    plan = RankPlan.for_split(len(dataset), batch_size, train, rank, world_size, seed, first_epoch, skip)
    return TorchLoader(
        dataset,
        plan,
        workers=workers,
        device=device,
        channels_last=channels_last,
        multiprocessing_context=multiprocessing_context,
    )
