"""One folder per run. A fresh run gets a folder of its own (``runs/<arch>-<date>-<time>``, or the
``--output-dir`` given, which must not hold another run); a resumed run writes into its own. Rank 0
decides and every rank learns the answer before anything is written, so no two runs ever share a log or
rotate each other's checkpoints. The folder holds the resolved configuration as ``config.yaml``, which
``--config`` reads back."""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from collections.abc import Callable

import torch.distributed as dist
import yaml

from .config import RunConfig
from .distributed import Placement, from_main
from .errors import ConfigError

CONFIG_FILE = "config.yaml"
RUNS = "runs"  # where unnamed runs go, under the working directory


def holds_a_run(folder: str) -> str | None:
    """What in ``folder`` belongs to a run (None: nothing)."""
    found = [name for name in ("log.jsonl", CONFIG_FILE) if os.path.exists(os.path.join(folder, name))]
    checkpoints = glob.glob(os.path.join(glob.escape(folder), "checkpoint-step*.pt"))
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint{'s' if len(checkpoints) > 1 else ''}")
    return ", ".join(found) or None


def _new_folder(arch: str) -> str:
    stem = os.path.join(RUNS, f"{arch.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder, n = stem, 1
    while os.path.exists(folder):
        n += 1
        folder = f"{stem}-{n}"
    return folder


def _choose(config: RunConfig) -> str:
    """Rank 0's decision: the run's folder, created and writable; ConfigError if it cannot be."""
    folder = config.run.output_dir
    if folder is None:
        folder = _new_folder(config.optim.arch)
    elif not config.run.resume and not config.run.evaluate:
        held = holds_a_run(folder)
        if held:
            raise ConfigError(
                f"--output-dir {folder} holds another run ({held}): continue it with --resume auto "
                f"--output-dir {folder}, or give a new --output-dir"
            )
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"--output-dir {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def claim(config: RunConfig, place: Placement, group: Callable[[], dist.ProcessGroup | None]) -> RunConfig:
    """``config`` with its run's folder, the same on every rank; every rank raises rank 0's ConfigError.
    ``group``: the host-side group's getter (called on every rank when the run is distributed)."""
    decision: tuple[str | None, str | None] = (None, None)
    if place.is_main:
        try:
            decision = (_choose(config), None)
        except ConfigError as exc:
            decision = (None, str(exc))
    if place.distributed:
        decision = from_main(decision, group())
    folder, error = decision
    if error is not None:
        raise ConfigError(error)
    assert folder is not None
    return dataclasses.replace(config, run=dataclasses.replace(config.run, output_dir=folder))


def write_config(config: RunConfig) -> str:
    """``config.yaml`` in the run's folder: the resolved flags, by section, as ``--config`` reads them."""
    path = os.path.join(config.output_dir, CONFIG_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(
            f"# the configuration of this run, as resolved at its start; train.py --config {CONFIG_FILE} reads it\n"
        )
        yaml.safe_dump(config.as_dict(), f, sort_keys=False)
    os.replace(tmp, path)
    return path
