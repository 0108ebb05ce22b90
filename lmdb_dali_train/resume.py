"""A run's state in and out of checkpoints: which checkpoint ``--resume`` means, restoring one (on another
world size or batch size too), and saving one from rank 0 with every rank told whether it worked."""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Any

from . import checkpoint
from .config import RunConfig
from .data import DatasetInfo
from .distributed import Placement, on_main
from .engine import TrainState, check_finite
from .errors import ConfigError
from .runlog import RunLog, stamp, warn
from .schedule import SamplesLR


def schedule_of(state: TrainState) -> SamplesLR:
    assert isinstance(state.scheduler, SamplesLR)  # model.build_state makes it
    return state.scheduler


def saved_flags(saved: dict[str, Any]) -> dict[str, Any]:
    """The flags a loaded checkpoint was trained with, by name (``args``: checkpoints of 0.1.0)."""
    sections = saved.get("config") or {}
    return {name: value for part in sections.values() for name, value in part.items()} or saved.get("args") or {}


def resume_path(resume: str | None, output_dir: str | None) -> str | None:
    """The checkpoint to resume from: --resume PATH as given (verified when loaded), or with --resume auto the
    newest one in --output-dir whose digest holds (one warning line for any newer one skipped); None when
    auto finds none (the run starts in that folder)."""
    if not resume:
        return None
    if resume != "auto":
        if not os.path.isfile(resume):
            raise ConfigError(f"--resume {resume}: no such checkpoint")
        return resume
    if output_dir is None:
        raise ConfigError("--resume auto needs --output-dir: the folder of the run to continue")
    path, skipped = checkpoint.latest_intact(output_dir)
    if path is None and skipped:
        newest, why = skipped[0]
        raise ConfigError(
            f"--resume auto: no intact checkpoint in {output_dir} ({len(skipped)} corrupt; newest "
            f"{os.path.basename(newest)}: {why})"
        )
    if skipped:
        names = ", ".join(os.path.basename(p) for p, _ in skipped)
        warn(f"--resume auto: skipping corrupt {names} ({skipped[0][1]}); resuming from {os.path.basename(str(path))}")
    return path


def restore(
    state: TrainState,
    path: str,
    train_info: DatasetInfo | None,
    force: bool,
    log: RunLog,
    *,
    arch: str | None = None,
    world_size: int = 1,
    evaluating: bool = False,
) -> list[dict[str, Any]]:
    """Load ``path`` into ``state``; on another world size or batch size the position (samples of the epoch
    consumed) carries over, the lr is rescaled to this run's global batch and its schedule continues by
    samples seen. Returns the bad records the run had met (``BadRecordLog.saved``). ConfigError for another
    dataset (unless ``force``), another ``arch``, a bad checkpoint."""
    # to the CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest onto the device
    saved = checkpoint.load(path, map_location="cpu")  # ConfigError on a foreign format or a bad digest
    saved_args = saved_flags(saved)
    if arch is not None and saved_args.get("arch", arch) != arch:
        raise ConfigError(
            f"--resume {path}: the checkpoint holds a {saved_args['arch']} model, not --arch {arch} "
            f"(resume with -a {saved_args['arch']}, or start a new --output-dir)"
        )
    if train_info is not None and saved.get("dataset") != train_info.identity:
        if not force:
            raise ConfigError(
                f"--resume {path}: the checkpoint was trained on a different dataset (class map, size "
                f"or database metadata differ); pass --force-resume to use it anyway"
            )
        warn(f"resuming {path} on a different dataset (--force-resume)")
    _check_same_shape(saved, state, path)
    state.module.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scaler is not None and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    state.epoch, state.step_in_epoch, state.global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
    state.epoch_position = saved["epoch_position"]
    checkpoint.restore_rng(saved["rng"])
    schedule = schedule_of(state)
    lr_before = saved["optimizer"]["param_groups"][0]["lr"]
    schedule.resume_at(saved["samples_seen"], state.global_step)
    lr_after = state.optimizer.param_groups[0]["lr"]
    batch = schedule.global_batch // world_size
    saved_world, saved_batch = saved.get("world_size"), saved_args.get("batch_size")
    if saved_world and saved_batch and saved_world * saved_batch != schedule.global_batch:
        lr_note = f"lr scaled from {lr_before:.6g} to {lr_after:.6g} (saved on {saved_world} ranks x {saved_batch})"
    else:
        lr_note = f"lr {lr_after:.6g} (same global batch)"
    bad_records: list[dict[str, Any]] = saved.get("bad_records", [])
    if evaluating:
        log.info(f"evaluating {path}: epoch {state.epoch}, global step {state.global_step}")
        return bad_records
    log.info(
        f"resumed from {path}, global step {state.global_step}: at sample {state.epoch_position} of epoch "
        f"{state.epoch} on {world_size} ranks x {batch} ({schedule.samples_seen} samples seen): {lr_note}"
    )
    return bad_records


def _check_same_shape(saved: dict[str, Any], state: TrainState, path: str) -> None:
    """ConfigError, naming the flag, for a checkpoint whose model or optimizer is built otherwise than this
    run's: --blurpool (the model's layers), --no-bn-weight-decay (the optimizer's parameter groups), --opt."""

    def blurred(model: dict[str, Any]) -> bool:
        return any(key.endswith("blur_filter") for key in model)

    def optimizer(groups: list[dict[str, Any]]) -> str:
        return "adamw" if "betas" in groups[0] else "sgd"

    here = (
        blurred(state.module.state_dict()),
        len(state.optimizer.param_groups) > 1,
        optimizer(state.optimizer.param_groups),
    )
    groups = saved["optimizer"]["param_groups"]
    there = (blurred(saved["model"]), len(groups) > 1, optimizer(groups))
    for flag, was, now in zip(("--blurpool", "--no-bn-weight-decay"), there[:2], here[:2], strict=True):
        if was != now:
            raise ConfigError(
                f"--resume {path}: the checkpoint was trained {'with' if was else 'without'} {flag}; resume "
                f"{'with' if was else 'without'} it, or start a new --output-dir"
            )
    if there[2] != here[2]:
        raise ConfigError(f"--resume {path}: the checkpoint was trained with --opt {there[2]}, not --opt {here[2]}")


def save(
    state: TrainState,
    config: RunConfig,
    train_info: DatasetInfo | None,
    place: Placement,
    bad_records: list[dict[str, Any]] | None = None,
) -> None:
    """Rank 0 writes the checkpoint, with the run's agreed ``bad_records`` (``BadRecordLog.saved``); every
    rank learns whether it failed (no rank left waiting at a barrier)."""
    started = time.perf_counter()
    check_finite(state)  # NaN weights are never saved (nor rotate a good checkpoint away)
    write = partial(_write, state, config, train_info, place, bad_records or [])
    path = on_main(place.is_main, state.device, write, "the checkpoint")  # disk full, or it did not verify
    if path is not None:  # what the save cost the run: every rank waited for it
        size = os.path.getsize(path)
        print(f"{stamp()} saved {path} ({size / 1e6:.1f} MB in {time.perf_counter() - started:.2f} s)", flush=True)


def _write(
    state: TrainState,
    config: RunConfig,
    train_info: DatasetInfo | None,
    place: Placement,
    bad_records: list[dict[str, Any]],
) -> str:
    """Rank 0's part of ``save``; returns the checkpoint's path."""
    return checkpoint.save(
        config.output_dir,
        {
            "model": state.module.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else {},
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "epoch_position": state.epoch_position,
            "global_step": state.global_step,
            "samples_seen": schedule_of(state).samples_seen,
            "world_size": place.world_size,
            "config": config.as_dict(),
            "rng": checkpoint.rng_state(),
            "dataset": train_info.identity if train_info is not None else None,
            "bad_records": bad_records,
        },
        keep=config.run.keep_checkpoints,
    )
