"""The torchvision loader: ImageFolderLMDB (or ImageFolder) in a DataLoader, in ``RankPlan`` order.

Its sampler follows the same ``RankPlan`` the DALI source follows, so both loaders deliver the same
samples in the same order each epoch. Augmentation is seeded per sample from (seed, epoch, index): a
sample gets the same crop whichever worker reads it, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import ImageFolder

from lmdb_io import ImageFolderLMDB, is_database

from .batch import Batch
from .plan import RankPlan
from .presets import preset_for
from .workers import ignore_stop_signals, stop_signals_blocked

_CPU = torch.device("cpu")


def open_image_dataset(
    path: str | os.PathLike, transform: Callable | None = None, lmdb: bool | None = None
) -> ImageFolderLMDB | ImageFolder:
    """An lmdb_io database as ImageFolderLMDB, or a plain ImageFolder tree (``lmdb=None``: by the path)."""
    if is_database(path) if lmdb is None else lmdb:
        return ImageFolderLMDB(path, transform=transform)
    return ImageFolder(os.fspath(path), transform=transform)


class PlanSampler(Sampler):
    """Yields ``(index, padding, epoch)`` in the plan's order; call ``set_epoch`` before each epoch."""

    def __init__(self, plan: RankPlan) -> None:
        self.plan = plan
        self.epoch = plan.first_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.for_epoch(self.epoch))

    def __iter__(self) -> Iterator[tuple[int, bool, int]]:
        order = self.plan.for_epoch(self.epoch)
        return zip(order.indices.tolist(), order.padding.tolist(), [self.epoch] * len(order), strict=True)


class _SeededItems(Dataset):
    """Wraps an image dataset: item ``(index, padding, epoch)`` -> (image, label, index, padding)."""

    def __init__(self, dataset: ImageFolderLMDB | ImageFolder, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool, int]) -> tuple[Any, int, int, bool]:
        index, padding, epoch = item
        # Seeded per sample, in a forked CPU RNG, so the caller's global RNG (workers=0) is left as it was.
        # Only the CPU generator (torchvision's transforms draw from it): torch.manual_seed also seeds every
        # CUDA device and other backends, ~130 us per sample against ~1 us here.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            image, label = self.dataset[index]
        return image, label, index, padding


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
        self.loader = DataLoader(
            _SeededItems(dataset, plan.seed),
            batch_size=plan.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
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
        with stop_signals_blocked(spawn=self._spawns):  # the workers are born ignoring them (loaders.workers)
            batches = iter(self.loader)
        for images, labels, indices, padding in batches:
            yield Batch(
                images.to(self.device, non_blocking=True, memory_format=memory_format),
                labels.to(self.device, non_blocking=True),
                indices,
                padding,
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
