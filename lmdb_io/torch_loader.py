"""The torchvision loader on the same shards: ImageFolderLMDB (or ImageFolder) in a DataLoader.

Its sampler follows ``lmdb_io.shard.epoch_plan``, the definition the DALI source uses too, so both
loaders deliver the same samples in the same order each epoch. Augmentation is seeded per sample from
(seed, epoch, index): a sample gets the same crop whichever worker reads it, so a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms
from torchvision.datasets import ImageFolder

from .batch import Batch
from .dataset import ImageFolderLMDB
from .shard import Shard, epoch_plan

_CPU = torch.device("cpu")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(crop: int = 224) -> Callable:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(crop),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def val_transform(resize: int = 256, crop: int = 224) -> Callable:
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def open_image_dataset(path: str | os.PathLike, transform: Callable | None = None) -> ImageFolderLMDB | ImageFolder:
    """An lmdb_io database as ImageFolderLMDB, or a plain ImageFolder tree."""
    if os.path.isfile(os.path.join(path, "data.mdb")):
        return ImageFolderLMDB(path, transform=transform)
    return ImageFolder(os.fspath(path), transform=transform)


class ShardSampler(Sampler):
    """Yields ``(index, real, epoch)`` in ``epoch_plan`` order; call ``set_epoch`` before each epoch."""

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
        self.length, self.batch_size = length, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.first_epoch, self.skip = first_epoch, skip
        self.epoch = first_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> Shard:
        return epoch_plan(
            self.length,
            self.rank,
            self.world_size,
            self.epoch,
            self.seed,
            self.shuffle,
            self.batch_size,
            self.drop_last,
            self.skip if self.epoch == self.first_epoch else 0,
        )

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[tuple[int, bool, int]]:
        plan = self.plan()
        return iter(zip(plan.indices.tolist(), (~plan.is_padding).tolist(), [self.epoch] * len(plan), strict=True))


class _SeededItems(Dataset):
    """Wraps an image dataset: item ``(index, real, epoch)`` -> (image, label, index, real)."""

    def __init__(self, dataset: ImageFolderLMDB | ImageFolder, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool, int]) -> tuple[Any, int, int, bool]:
        index, real, epoch = item
        # Seeded per sample, in a forked CPU RNG, so the caller's global RNG (workers=0) is left as it was.
        # Only the CPU generator (torchvision's transforms draw from it): torch.manual_seed also seeds every
        # CUDA device and other backends, ~130 us per sample against ~1 us here.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            image, label = self.dataset[index]
        return image, label, index, real


class TorchLoader:
    """A DataLoader over one rank's plan that yields ``Batch`` on the training device."""

    def __init__(
        self,
        dataset: ImageFolderLMDB | ImageFolder,
        sampler: ShardSampler,
        *,
        workers: int,
        device: torch.device,
        channels_last: bool = False,
        seed: int = 0,
        multiprocessing_context: str | None = None,
    ) -> None:
        self.sampler, self.device, self.channels_last = sampler, device, channels_last
        self.loader = DataLoader(
            _SeededItems(dataset, seed),
            batch_size=sampler.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
            persistent_workers=False,
            multiprocessing_context=multiprocessing_context if workers else None,
            # DataLoader draws each epoch's worker base seed from this, not from the global RNG
            generator=torch.Generator().manual_seed(seed),
        )
        self._epoch = sampler.first_epoch

    def __len__(self) -> int:
        """Batches in the coming epoch."""
        return len(self.sampler) // self.sampler.batch_size

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.set_epoch(self._epoch)
        self._epoch += 1
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels, indices, real in self.loader:
            yield Batch(
                images.to(self.device, non_blocking=True, memory_format=memory_format),
                labels.to(self.device, non_blocking=True),
                indices,
                real,
            )


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
    multiprocessing_context: str | None = None,
) -> TorchLoader:
    """The torchvision loader for one rank: train drops the shard's remainder, val pads and masks."""
    transform = train_transform(crop) if train else val_transform(val_resize, crop)
    dataset = open_image_dataset(path, transform)
    sampler = ShardSampler(
        len(dataset),
        batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle=train,
        drop_last=train,
        first_epoch=first_epoch,
        skip=skip,
    )
    return TorchLoader(
        dataset,
        sampler,
        workers=workers,
        device=device,
        channels_last=channels_last,
        seed=seed,
        multiprocessing_context=multiprocessing_context,
    )
