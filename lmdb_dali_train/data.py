"""The one place that turns the run's configuration into loaders: DALI or torch, database or ImageFolder tree,
or synthetic batches. Every loader is a ``BatchLoader``, so the loops never branch on it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
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


def local_ranks(world_size: int, env: Mapping[str, str] | None = None) -> int:
    """How many ranks of this run share this node's cores: torchrun's LOCAL_WORLD_SIZE, SLURM's tasks on this
    node in an ``srun`` step, else (one node, ``--multiprocessing-distributed``) one per visible GPU at most."""
    env = os.environ if env is None else env
    if "LOCAL_WORLD_SIZE" in env:
        return max(1, int(env["LOCAL_WORLD_SIZE"]))
    if "RANK" not in env and env.get("SLURM_STEP_TASKS_PER_NODE"):
        return max(1, int(re.split(r"[(,]", env["SLURM_STEP_TASKS_PER_NODE"])[0]))  # "8(x2)": 8 on each of 2
    return max(1, min(world_size, torch.cuda.device_count() or world_size))


def cores_per_rank(world_size: int, env: Mapping[str, str] | None = None) -> int:
    """The CPU cores this rank can count on: those it may run on, shared by the node's ranks, or SLURM's
    ``--cpus-per-task`` for a rank that ``srun`` started."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "RANK" not in env and env.get("SLURM_CPUS_PER_TASK") and env.get("SLURM_STEP_NUM_TASKS"):
        return max(1, min(cores, int(env["SLURM_CPUS_PER_TASK"])))
    return max(1, cores // local_ranks(world_size, env))


def default_threads(world_size: int) -> int:
    """DALI's CPU threads per training pipeline: the rank's cores, at most 8."""
    return min(8, cores_per_rank(world_size))


FULL_CPU_SHARE_CORES = 8  # cores per rank from which the CPU takes DALI's default share of the JPEGs (35%)


def default_hw_decoder_load(cores: int) -> float:
    """The share of train JPEGs for the GPU's hardware decoder on a rank with ``cores`` CPU cores: DALI's 0.65
    from 8 cores; with fewer, the CPU's share (Huffman decoding of the rest) shrinks with its cores, so 2
    cores (8 GPUs on 16 cores) send 91% to the hardware decoder instead of leaving 35% to 2 cores."""
    return round(1 - 0.35 * min(1.0, cores / FULL_CPU_SHARE_CORES), 2)


def val_share(count: int) -> int:
    """Worker processes for a validation loader given ``count`` for training: half, at least one
    (none stays none). Validation runs once an epoch, yet its pipeline holds its threads, workers and
    buffers all through training, and prefetches the next validation epoch right after each evaluation,
    competing with the training loader."""
    return max(1, count // 2) if count > 0 else 0


def val_threads(threads: int) -> int:
    """DALI threads for a validation pipeline given ``threads`` for training: half, but two where training
    has two or more. Validation decodes every JPEG on the CPU-assisted path (``hw_decoder_load`` 0, for pixel
    parity with torchvision), while the training pipeline waits: one thread would make it the bottleneck
    on a rank of 2 or 3 cores."""
    return max(min(2, threads), val_share(threads))


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
    known_bad: frozenset[int] = frozenset(),
) -> BatchLoader:
    """The loader the configuration asks for, for one rank; ``skip`` resumes mid-epoch (positions of the epoch's
    global order, see ``lmdb_io.reading.plan.RankPlan``); ``known_bad``: records replaced from the start."""
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
        workers = None if workers is None else val_share(workers)
        threads = val_threads(threads) if data.loader == "dali" else val_share(threads)
    hw_load = data.hw_decoder_load
    if hw_load is None:
        hw_load = default_hw_decoder_load(cores_per_rank(world_size))
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
        known_bad=known_bad,
    )
    output: dict[str, Any] = dict(device=device, dtype=config.image_dtype, channels_last=optim.channels_last)
    if data.loader == "torch":
        from lmdb_dali_train.loaders.torch_loader import make_torch_loader

        return make_torch_loader(spec, workers=threads if workers is None else workers, **output)
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    return make_dali_loader(spec, dali_threads=threads, py_workers=workers, hw_decoder_load=hw_load, **output)
