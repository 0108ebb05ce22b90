"""The one place that picks a loader: DALI or torch, LMDB or ImageFolder, or synthetic batches.

Every loader yields ``lmdb_io.batch.Batch`` and knows its batch count, so the training and
evaluation loops never branch on the loader.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lmdb_io import LmdbIoError
from lmdb_io.batch import Batch
from lmdb_io.shard import batches_per_epoch

from .config import ConfigError

DALI_INSTALL_HINT = (
    "DALI is not installed: pip install '.[cuda130]' (NVIDIA driver >= 580, or no GPU) or '.[cuda120]' "
    "(driver >= 525), or use --loader torch (DALI wheels exist for Linux x86_64/aarch64 only)"
)


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about the training data before building anything."""

    length: int
    classes: list[str]
    identity: dict[str, Any]  # stored in checkpoints: resuming on other data is refused
    key_of: Callable[[int], str]  # dataset index -> the key written to --log-keys files


def _folder_classes(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def describe_dataset(path: str, lmdb: bool) -> DatasetInfo:
    """Read the class map and size of a database or an ImageFolder tree; one-line errors."""
    if lmdb:
        from lmdb_io import open_database

        try:
            db = open_database(path)
        except LmdbIoError as exc:
            raise ConfigError(str(exc)) from None
        identity = {"kind": "lmdb", "length": len(db), "meta": json.dumps(db.meta, sort_keys=True)}
        return DatasetInfo(len(db), db.classes, identity, lambda i: db.key(i).decode())
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(path)
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"{path}: not a usable ImageFolder tree ({exc})") from None
    rel = [os.path.relpath(p, path) for p, _ in folder.samples]
    identity = {"kind": "folder", "length": len(folder), "classes": folder.classes}
    return DatasetInfo(len(folder), folder.classes, identity, lambda i: rel[i])


def check_class_maps(train: DatasetInfo, val: DatasetInfo | None, train_path: str, val_path: str) -> None:
    if val is not None and val.classes != train.classes:
        differ = next(
            (i for i, (a, b) in enumerate(zip(train.classes, val.classes, strict=False)) if a != b),
            min(len(train.classes), len(val.classes)),
        )
        raise ConfigError(
            f"class maps differ: {train_path} has {len(train.classes)} classes, {val_path} has "
            f"{len(val.classes)}, first difference at index {differ}; convert the val set with "
            f"--classes-from {train_path}"
        )


def require_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401 (imported only to see whether DALI is installed)
    except ImportError:
        raise ConfigError(DALI_INSTALL_HINT) from None


class SyntheticLoader:
    """The same random batch, resident on the device, ``steps`` times per epoch: no input cost at all."""

    def __init__(
        self,
        batch_size: int,
        crop: int,
        num_classes: int,
        steps: int,
        device: torch.device,
        channels_last: bool,
        half: bool,
    ) -> None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch_size, 3, crop, crop, generator=generator)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.images = images.to(device, torch.float16 if half else torch.float32).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
        self.indices = torch.full((batch_size,), -1, dtype=torch.int64)
        self.real = torch.ones(batch_size, dtype=torch.bool)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.steps):
            yield Batch(self.images, self.labels, self.indices, self.real)


# Test hook: sleep this many seconds before each batch, a loader slowed on purpose (data-wait checks).
LOADER_DELAY_ENV = "TRAIN_TEST_LOADER_DELAY_S"


class DelayedLoader:
    def __init__(self, loader: Any, seconds: float) -> None:
        self.loader, self.seconds = loader, seconds

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            time.sleep(self.seconds)
            yield batch


def default_threads(world_size: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = max(1, cores // max(1, min(world_size, torch.cuda.device_count() or world_size)))
    return min(8, per_process)


def make_loader(args: argparse.Namespace, path: str, train: bool, **kwargs: Any) -> Any:
    """The loader the flags ask for, for one rank (see ``_make_loader``)."""
    loader = _make_loader(args, path, train, **kwargs)
    delay = float(os.environ.get(LOADER_DELAY_ENV, "0") or 0)
    return DelayedLoader(loader, delay) if delay > 0 else loader


def _make_loader(
    args: argparse.Namespace,
    path: str,
    train: bool,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    first_epoch: int = 0,
    skip_batches: int = 0,
    num_classes: int = 1000,
    length: int = 0,
) -> Any:
    """The loader the flags ask for, for one rank; ``skip_batches`` resumes mid-epoch."""
    half = device.type == "cuda" and args.amp in ("bf16", "fp16")
    if args.synthetic:
        steps = batches_per_epoch(length, world_size, args.batch_size, True) if length else 100
        return SyntheticLoader(
            args.batch_size,
            args.crop_size,
            num_classes,
            steps - skip_batches if train else steps,
            device,
            args.channels_last,
            half,
        )
    threads = args.dali_threads or default_threads(world_size)
    common = dict(
        train=train,
        rank=rank,
        world_size=world_size,
        seed=args.seed,
        crop=args.crop_size,
        val_resize=args.val_resize,
        channels_last=args.channels_last,
    )
    skip = skip_batches * args.batch_size if train else 0
    if args.loader == "torch":
        from lmdb_io.torch_loader import make_torch_loader

        workers = threads if args.workers is None else args.workers
        return make_torch_loader(
            path, args.batch_size, workers=workers, device=device, first_epoch=first_epoch, skip=skip, **common
        )
    require_dali()
    device_id = device.index if device.type == "cuda" else None
    options = dict(
        num_threads=threads,
        hw_decoder_load=args.hw_decoder_load,
        half=half,
        crop=args.crop_size,
        val_resize=args.val_resize,
        channels_last=args.channels_last,
    )
    if args.workers is not None:
        options["py_workers"] = args.workers
    if args.lmdb:
        from dali_pipeline import make_dali_loader

        common = {k: v for k, v in common.items() if k not in options}
        return make_dali_loader(
            path, args.batch_size, device_id=device_id, first_epoch=first_epoch, skip=skip, **common, **options
        )
    from dali_pipeline.loader import DALIFolderLoader
    from dali_pipeline.pipelines import PipelineOptions

    options.pop("py_workers", None)
    opts = PipelineOptions(batch_size=args.batch_size, device_id=device_id, seed=args.seed + rank, **options)
    return DALIFolderLoader(path, opts, train, rank, world_size)
