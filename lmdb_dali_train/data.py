"""The one place that turns the run's configuration into loaders: DALI or torch, database or ImageFolder tree,
or synthetic batches. Every loader is a ``BatchLoader``, so the loops never branch on it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmdb_dali_train.loaders.batch import BatchLoader
from lmdb_io import LmdbIoError
from lmdb_io.errors import convert_command
from lmdb_io.reading.spec import ReadSpec

from .config import RunConfig
from .distributed import Placement
from .errors import ConfigError

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


def check_class_maps(
    train: DatasetInfo, val: DatasetInfo | None, train_path: str | None, val_path: str | None, lmdb: bool
) -> None:
    """The validation data must number its classes as the training data does; the hint says how, for
    databases (the converter's ``--classes-from``) or for trees (ImageFolder numbers the sorted folders)."""
    if val is not None and val.classes != train.classes:
        differ = next(
            (i for i, (a, b) in enumerate(zip(train.classes, val.classes, strict=False)) if a != b),
            min(len(train.classes), len(val.classes)),
        )
        raise ConfigError(
            f"class maps differ: {train_path} has {len(train.classes)} classes, {val_path} has "
            f"{len(val.classes)}, first difference at index {differ}; "
            + (
                f"convert the val set with {convert_command()} --classes-from {train_path}"
                if lmdb
                else f"give {val_path} the same class folders as {train_path} (an empty one for a class it lacks)"
            )
        )


def require_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401 (imported only to see whether DALI is installed)
    except ImportError:
        raise ConfigError(DALI_INSTALL_HINT) from None


def default_threads(world_size: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = max(1, cores // max(1, min(world_size, torch.cuda.device_count() or world_size)))
    return min(8, per_process)


def val_share(count: int) -> int:
    """Threads or worker processes for a validation loader given ``count`` for training: half, at least one
    (none stays none). Validation runs once an epoch, yet its pipeline holds its threads, workers and
    buffers all through training, and prefetches the next validation epoch right after each evaluation,
    competing with the training loader."""
    return max(1, count // 2) if count > 0 else 0


def make_loader(
    config: RunConfig,
    path: str,
    train: bool,
    *,
    place: Placement,
    device: torch.device,
    first_epoch: int = 0,
    skip: int = 0,
    num_classes: int = 1000,
    synthetic_steps: int = 100,
) -> BatchLoader:
    """The loader the configuration asks for, for one rank; ``skip`` resumes mid-epoch (positions of the epoch's
    global order, see ``lmdb_io.reading.plan.RankPlan``)."""
    data, optim = config.data, config.optim
    rank, world_size = place.rank, place.world_size
    crop = data.crop_size if train else data.val_crop
    if data.synthetic:
        from lmdb_dali_train.loaders.synthetic import SyntheticLoader

        return SyntheticLoader(
            optim.batch_size,
            crop,
            num_classes,
            synthetic_steps,
            device,
            optim.channels_last,
            config.image_dtype,
        )
    threads = data.dali_threads or default_threads(world_size)
    workers = data.workers
    if not train:
        threads, workers = val_share(threads), None if workers is None else val_share(workers)
    spec = ReadSpec(
        path=path,
        lmdb=data.lmdb,
        train=train,
        batch_size=optim.batch_size,
        rank=rank,
        world_size=world_size,
        seed=optim.seed,
        crop=crop,
        val_resize=data.val_resize,
        resolution=data.resolution if train else None,  # progressive resizing: training only
        first_epoch=first_epoch,
        skip=skip if train else 0,
    )
    output: dict[str, Any] = dict(device=device, dtype=config.image_dtype, channels_last=optim.channels_last)
    if data.loader == "torch":
        from lmdb_dali_train.loaders.torch_loader import make_torch_loader

        return make_torch_loader(spec, workers=threads if workers is None else workers, **output)
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    return make_dali_loader(
        spec, dali_threads=threads, py_workers=workers, hw_decoder_load=data.hw_decoder_load, **output
    )
