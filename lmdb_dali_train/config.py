"""The run's configuration: ``train.py``'s flags checked and resolved once into a frozen ``RunConfig``.

Its sections follow the parser's groups (``flags``): data, optimisation, run control, distributed. Each
flag is a field of one section under its argparse name (``batch_size`` for ``--batch-size``), so a
configuration file can name the same fields. Values derived from the flags (the resolution schedule, the
mixed-precision dtypes, the device type) are computed here, once, and nothing changes a ``RunConfig``
after it is built: the trainer hands each layer below it the fields it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from lmdb_io import is_database
from lmdb_io.errors import convert_command
from lmdb_io.reading.resolution import ResolutionSchedule

from .blurpool import applies_to as blurpool_applies_to
from .errors import ConfigError
from .schedule import SCHEDULES


def _derived() -> Any:
    """A field computed from the flags in ``__post_init__``: not a flag, not in ``as_dict``."""
    return field(init=False, repr=False, compare=False)


@dataclass(frozen=True)
class DataConfig:
    """What to read and how: the ``data`` flags."""

    train: str | None = None
    val: str | None = None
    lmdb: bool = False
    loader: str = "dali"
    synthetic: bool = False
    workers: int | None = None
    dali_threads: int | None = None
    hw_decoder_load: float | None = None  # None: by the cores per rank (data.default_hw_decoder_load)
    crop_size: int = 224
    val_resize: int = 256
    val_crop_size: int | None = None  # None: crop_size (the property val_crop)
    val_tta: bool = False
    min_res: int | None = None
    max_res: int | None = None
    start_ramp: int | None = None
    end_ramp: int | None = None
    log_keys: bool = False
    resolution: ResolutionSchedule | None = _derived()  # progressive resizing; None: --crop-size throughout

    def __post_init__(self) -> None:
        for flag, path in (("--train", self.train), ("--val", self.val)):
            if path:
                _check_data_path(flag, path, self.lmdb)
        for name in ("crop_size", "val_resize"):
            _positive(name, getattr(self, name))
        if self.val_crop_size is not None:
            _positive("val_crop_size", self.val_crop_size)
        if self.hw_decoder_load is not None and not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ConfigError("--hw-decoder-load must be between 0 and 1")
        object.__setattr__(self, "resolution", _resolution_schedule(self))

    @property
    def val_crop(self) -> int:
        """Validation's center crop: --val-crop-size, else --crop-size."""
        return self.crop_size if self.val_crop_size is None else self.val_crop_size


@dataclass(frozen=True)
class OptimConfig:
    """The model and how it learns: the ``model and optimisation`` flags."""

    arch: str = "resnet50"
    weights: str | None = None
    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    warmup_epochs: float = 1.0
    lr_schedule: str = "cosine"
    opt: str = "sgd"
    momentum: float = 0.9
    wd: float = 1e-4
    no_bn_weight_decay: bool = False
    blurpool: bool = False
    label_smoothing: float = 0.0
    amp: str | None = None  # None: chosen by the device (amp_dtype)
    channels_last: bool = False
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "lr"):
            _positive(name, getattr(self, name))
        if self.weights is not None and not os.path.isfile(self.weights):
            raise ConfigError(f"--weights {self.weights}: no such file")
        for flag, value in (("--momentum", self.momentum), ("--label-smoothing", self.label_smoothing)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{flag} must be in [0, 1), not {value:g}")
        if self.opt not in ("sgd", "adamw"):
            raise ConfigError(f"--opt {self.opt}: one of sgd, adamw")
        if self.blurpool and not blurpool_applies_to(self.arch):
            raise ConfigError(
                f"--blurpool applies to torchvision ResNets (resnet*, resnext*, wide_resnet*), not --arch {self.arch}"
            )
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"--lr-schedule {self.lr_schedule}: one of {', '.join(SCHEDULES)}")
        if self.wd < 0 or self.warmup_epochs < 0:
            raise ConfigError(
                f"--wd and --warmup-epochs must not be negative (--wd {self.wd:g}, --warmup-epochs "
                f"{self.warmup_epochs:g})"
            )

    def global_batch(self, world_size: int) -> int:
        """The batch of one optimizer step: ``batch_size`` on each of ``world_size`` processes."""
        return self.batch_size * world_size

    def scaled_lr(self, world_size: int) -> float:
        """``lr`` is the rate for a global batch of 256, scaled linearly to the real one."""
        return self.lr * self.global_batch(world_size) / 256


@dataclass(frozen=True)
class RunControl:
    """Where the run writes, when it stops, what it resumes: the ``run control`` flags."""

    device: str = "auto"
    max_steps: int | None = None
    print_freq: int = 10
    output_dir: str | None = None  # None: main names a new folder under runs/
    keep_checkpoints: int = 2
    resume: str | None = None
    force_resume: bool = False
    evaluate: bool = False
    max_bad_records: int = 10
    save_every: int | None = None  # optimizer steps between mid-epoch checkpoints
    save_every_minutes: float | None = None  # minutes (rank 0's clock) between mid-epoch checkpoints

    def __post_init__(self) -> None:
        _positive("print_freq", self.print_freq)
        _positive("keep_checkpoints", self.keep_checkpoints)
        if self.save_every is not None:
            _positive("save_every", self.save_every)
        if self.save_every_minutes is not None:
            _positive("save_every_minutes", self.save_every_minutes)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        if self.max_bad_records < 0:
            raise ConfigError("--max-bad-records must be 0 or more")
        # --resume itself is checked where it is resolved, once: resume.resume_path


@dataclass(frozen=True)
class DistConfig:
    """How the processes meet: the ``distributed`` flags (torchrun's or SLURM's environment wins)."""

    multiprocessing_distributed: bool = False
    procs_per_node: int | None = None
    world_size: int = 1
    rank: int = 0
    dist_url: str = "env://"
    dist_backend: str | None = None
    dist_timeout: float = 600.0

    def __post_init__(self) -> None:
        _positive("dist_timeout", self.dist_timeout)


@dataclass(frozen=True)
class RunConfig:
    """One run's whole configuration, checked; built by ``from_args`` and never changed."""

    data: DataConfig
    optim: OptimConfig
    run: RunControl
    dist: DistConfig
    cuda: bool = _derived()  # training runs on GPUs
    amp_dtype: torch.dtype | None = _derived()  # autocast's dtype; None: full precision
    image_dtype: torch.dtype = _derived()  # the dtype loaders hand images over in

    def __post_init__(self) -> None:
        if self.run.evaluate and not self.data.val:
            raise ConfigError("--evaluate needs --val")
        if not self.run.evaluate and not self.data.train and not self.data.synthetic:
            raise ConfigError("--train is required (or --synthetic, or --evaluate with --val)")
        if self.run.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        cuda = self.run.device != "cpu" and torch.cuda.is_available()
        if not cuda and self.optim.amp == "fp16":
            raise ConfigError("--amp fp16 needs CUDA (this run is on the CPU); use --amp bf16 or off")
        if not cuda and self.dist.dist_backend == "nccl":
            raise ConfigError("--dist-backend nccl needs CUDA (this run is on the CPU); use gloo")
        amp = self.optim.amp or ("off" if not cuda else "bf16" if torch.cuda.is_bf16_supported() else "fp16")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
        object.__setattr__(self, "cuda", cuda)
        object.__setattr__(self, "amp_dtype", amp_dtype)
        # half precision under AMP on a GPU (what the first layer would cast to anyway), else float32;
        # DALI has no bfloat16 and hands float16 under bf16
        object.__setattr__(self, "image_dtype", amp_dtype if cuda and amp_dtype is not None else torch.float32)

    @property
    def output_dir(self) -> str:
        """The run's folder, once ``run_folder.claim`` has named it (always, below ``main.run``)."""
        if self.run.output_dir is None:
            raise RuntimeError("the run's folder is not named yet (run_folder.claim)")
        return self.run.output_dir

    @property
    def amp(self) -> str:
        """The mixed precision in force, as ``--amp`` names it."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[self.amp_dtype]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """Check and resolve parsed flags; ConfigError names the flag at fault."""
        flags = vars(args)

        def section(kind: type) -> Any:
            return kind(**{f.name: flags[f.name] for f in dataclasses.fields(kind) if f.init})

        return cls(section(DataConfig), section(OptimConfig), section(RunControl), section(DistConfig))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The flags by section (derived values left out): what the log and checkpoints record."""
        return {
            name: {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if f.init}
            for name, part in (("data", self.data), ("optim", self.optim), ("run", self.run), ("dist", self.dist))
        }


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be positive")


def _check_data_path(flag: str, path: str, lmdb: bool) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"{flag} {path}: no such file or directory")
    if lmdb and not is_database(path):
        raise ConfigError(
            f"{flag} {path}: not an LMDB database (no data.mdb); convert it with {convert_command()} "
            f"or drop --lmdb to read an ImageFolder tree"
        )
    if not lmdb and is_database(path):
        raise ConfigError(f"{flag} {path} is an LMDB database: add --lmdb")


def _resolution_schedule(data: DataConfig) -> ResolutionSchedule | None:
    """The training crop's schedule over epochs from --min-res/--max-res/--start-ramp/--end-ramp, or None
    (every epoch at --crop-size); ConfigError naming the flags for one that cannot be. The flags'
    combinations are checked here, their values by ``ResolutionSchedule``."""
    low = data.crop_size if data.min_res is None else data.min_res
    high = data.crop_size if data.max_res is None else data.max_res
    start, end = data.start_ramp, data.end_ramp
    if low == high and (start is not None or end is not None):
        raise ConfigError(f"--start-ramp/--end-ramp need --min-res and --max-res to differ (both are {low})")
    if low != high:
        if start is None or end is None:
            raise ConfigError(
                f"--min-res {low} and --max-res {high} differ: progressive resizing needs --start-ramp and --end-ramp"
            )
        if data.synthetic:
            raise ConfigError("--min-res/--max-res (progressive resizing) do not apply to --synthetic batches")
        if data.loader == "dali" and not data.lmdb:
            raise ConfigError(
                "--min-res/--max-res (progressive resizing) with --loader dali need --lmdb (DALI's file reader "
                "path has no per-epoch source); use --lmdb or --loader torch"
            )
    try:
        schedule = ResolutionSchedule(low, high, start or 0, end or 0)
    except ValueError as error:
        flags = f"--min-res {low} --max-res {high}" + (f" --start-ramp {start} --end-ramp {end}" if low != high else "")
        raise ConfigError(f"{flags}: {error}") from None
    return schedule if schedule.progressive else None
