"""train.py's body: one process's run (placement, data, model, resume) and the epoch loop around
``engine``'s steps; the exit code of each way out (``exit_codes``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import torch

from lmdb_dali_train.loaders.batch import BatchLoader, without_dali
from lmdb_io.reading.plan import RankPlan

from . import checkpoint, run_folder
from .architectures import check_arch
from .bad_records import BadRecordLog
from .config import RunConfig
from .config_file import read_flags, under_checkpoint
from .data import DatasetInfo, check_class_maps, describe_dataset, make_loader, require_dali
from .distributed import (
    Placement,
    default_rendezvous,
    init_process_group,
    pick_device,
    placement_from_env,
    shutdown,
    slurm_tasks_without_step,
)
from .engine import (
    KeyLog,
    NonFiniteLossError,
    SaveCadence,
    StopSignal,
    TrainState,
    evaluate,
    log_speed,
    train_epoch,
)
from .errors import ConfigError
from .exit_codes import ExitCode, for_signal
from .fresh_process import FreshProcessWanted, continue_in_fresh_process
from .model import build_state
from .progname import prog_name
from .resume import restore, resume_path, save, saved_flags
from .runlog import RunLog, warn
from .speed import Speedometer
from .watch import RunWatch


def run(config: RunConfig, place: Placement, stop: StopSignal, resume_from: str | None = None) -> int:
    """One process's whole job; returns the exit code. ``stop``: installed by the caller at the start;
    ``resume_from``: the checkpoint ``--resume`` names, found by ``main``."""
    data = config.data
    device = pick_device(config.cuda, place.local_rank)
    check_arch(config.optim.arch)  # before any data is read: a typo fails at once
    if data.loader == "dali" and not data.synthetic:
        require_dali()
    train_info = describe_dataset(data.train, data.lmdb) if data.train else None
    val_info = describe_dataset(data.val, data.lmdb) if data.val else None
    if train_info is not None:
        check_class_maps(train_info, val_info, data.train, data.val, data.lmdb)
    with stop.deferred_to_default():  # a signal while the ranks meet ends this process at once
        init_process_group(place, device, config.dist.dist_backend, config.dist.dist_url, config.dist.dist_timeout)
    config = run_folder.claim(config, place, stop.host_group)  # the same folder on every rank, or none
    run_control, evaluating = config.run, config.run.evaluate
    torch.manual_seed(config.optim.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input shapes: let cuDNN pick kernels
    log = RunLog(config.output_dir, enabled=place.is_main)
    if place.is_main and not evaluating:
        log.info(f"run folder {config.output_dir} ({run_folder.write_config(config)})")
        for stale in checkpoint.clean_stale_temps(config.output_dir):
            log.info(f"removed {stale}: the temporary file of a save that never finished")
    info = train_info or val_info
    num_classes = len(info.classes) if info else 1000
    length = info.length if info else 0
    batch_size = config.optim.batch_size
    # a fresh epoch's batches per rank, by the plan the loaders follow (synthetic batches: 100 per epoch)
    steps_per_epoch = RankPlan(length, batch_size, world_size=place.world_size).num_batches(0) if length else 100
    if steps_per_epoch == 0 and not evaluating:  # evaluation pads its last batch
        raise ConfigError(
            f"{data.train or data.val}: {length} images over {place.world_size} processes give no "
            f"whole batch of {batch_size}; lower --batch-size"
        )
    state = build_state(config, place, device, num_classes, max(1, steps_per_epoch))
    datasets = {split: info.identity for split, info in (("train", train_info), ("val", val_info)) if info}
    bad = BadRecordLog(
        config.output_dir, run_control.max_bad_records, place.rank, place.is_main, log, stop.host_group, datasets
    )
    if resume_from:
        met_before = restore(
            state,
            resume_from,
            train_info,
            run_control.force_resume,
            log,
            arch=config.optim.arch,
            world_size=place.world_size,
            evaluating=evaluating,
        )
        bad.restore(met_before)  # met, listed and counted once: the loaders replace them from the start
        if bad.exceeded and not evaluating:
            raise ConfigError(
                f"--resume {resume_from}: the run has met {len(bad.known)} bad records (listed in {bad.path}), "
                f"more than --max-bad-records {run_control.max_bad_records}: raise it to continue"
            )
    elif run_control.resume == "auto":
        log.info(f"--resume auto: no checkpoint in {config.output_dir}, starting fresh")
    if evaluating:
        log.record("start", f"evaluating {config.optim.arch} on {data.val}", config=config.as_dict())
    else:
        log.record(
            "start",
            f"{config.optim.arch} on {device} x{place.world_size}, loader "
            f"{'synthetic' if data.synthetic else data.loader}, global batch "
            f"{config.optim.global_batch(place.world_size)}, amp {config.amp}, {steps_per_epoch} steps/epoch",
            config=config.as_dict(),
            world_size=place.world_size,
            steps_per_epoch=steps_per_epoch,
        )

    def loader_for(path: str, train: bool, first_epoch: int = 0, skip: int = 0) -> BatchLoader:
        return make_loader(
            config,
            path,
            train,
            place=place,
            device=device,
            first_epoch=first_epoch,
            skip=skip,
            num_classes=num_classes,
            synthetic_steps=steps_per_epoch - state.step_in_epoch if train else steps_per_epoch,
            known_bad=bad.indices("train" if train else "val"),
        )

    val_loader = loader_for(data.val, False) if data.val else None
    if evaluating:
        assert val_loader is not None  # RunConfig requires --val with --evaluate
        return _evaluate_only(state, val_loader, log, bad, stop)
    return _fit(config, place, state, train_info, loader_for, val_loader, log, bad, stop, steps_per_epoch)


def _evaluate_only(state: TrainState, val_loader: BatchLoader, log: RunLog, bad: BadRecordLog, stop: StopSignal) -> int:
    try:
        metrics = evaluate(state, val_loader, stop)
        bad.collect(val_loader, state.epoch, state.global_step, "val")
        bad.agree()  # lists them; evaluation itself is complete
    finally:
        val_loader.close()
    if metrics is None:
        log.info("evaluation stopped by a signal: no metrics")
        log.close()
        return for_signal(stop.agreed_signum)
    log.record("val", _val_line(state.epoch, metrics), epoch=state.epoch, **metrics)
    log.close()
    return ExitCode.OK


def _val_line(epoch: int, m: dict[str, float]) -> str:
    return f"val epoch {epoch}: loss {m['loss']:.4f} top1 {m['top1']:.2f} top5 {m['top5']:.2f} ({m['count']} images)"


def _validate(
    state: TrainState, val_loader: BatchLoader | None, stop: StopSignal, log: RunLog, bad: BadRecordLog
) -> str:
    """At the end of an epoch (already counted in ``state``): "stopped" if a stop signal is agreed before or
    during validation, else "done" (with the metrics logged: a wish for a fresh process waits until then,
    and a process whose DALI pipeline failed validates on the CPU). An interrupted validation gives no metrics
    and is not redone by a resumed run, which goes on with the next epoch (``--evaluate --resume CKPT``
    measures that checkpoint)."""
    if stop.agreed() and stop.agreed_signum:
        return "stopped"
    if val_loader is None:
        return "done"
    if stop.fresh_wanted:  # a DALI pipeline of this process failed: none is run here again
        log.info(f"validation of epoch {state.epoch - 1} runs without DALI (slower): a DALI pipeline failed here")
        without_dali(val_loader)
    metrics = evaluate(state, val_loader, stop)
    bad.collect(val_loader, state.epoch - 1, state.global_step, "val")
    if metrics is None:
        log.info(f"validation of epoch {state.epoch - 1} interrupted by the stop: no metrics")
        return "stopped"
    log.record("val", _val_line(state.epoch - 1, metrics), epoch=state.epoch - 1, **metrics)
    return "done"


def _fit(
    config: RunConfig,
    place: Placement,
    state: TrainState,
    train_info: DatasetInfo | None,
    loader_for: Callable[..., BatchLoader],
    val_loader: BatchLoader | None,
    log: RunLog,
    bad: BadRecordLog,
    stop: StopSignal,
    steps_per_epoch: int,
) -> int:
    data, run_control, epochs = config.data, config.run, config.optim.epochs
    max_steps = run_control.max_steps
    if state.step_in_epoch and data.loader == "dali" and not data.lmdb and not data.synthetic:
        warn("DALI's file reader cannot resume mid-epoch: the interrupted epoch restarts from its beginning")
        state.step_in_epoch = state.epoch_position = 0
    train_loader = loader_for(data.train, True, state.epoch, state.epoch_position)
    key_log = None
    if data.log_keys and train_info is not None:
        key_log = KeyLog(os.path.join(config.output_dir, f"keys-rank{place.rank}.tsv"), train_info.key_of)
    steps_run = 0
    outcome = "stopped" if stop.agreed() else "done"  # a signal while the run was starting
    meter, finished = Speedometer(state.device, place.world_size), False
    cadence = SaveCadence(run_control.save_every, run_control.save_every_minutes, place.is_main)

    def checkpoint_now() -> None:
        bad.agree()  # every rank: the records met so far are saved with the run, never met again
        save(state, config, train_info, place, bad.saved())
        cadence.saved()

    watch = RunWatch(
        config, place, log, steps_per_epoch=steps_per_epoch, epoch=state.epoch, global_step=state.global_step
    )
    try:
        while outcome == "done" and state.epoch < epochs:
            left = None if max_steps is None else max_steps - steps_run
            if data.resolution is not None:  # the loaders follow the same schedule, by the epoch of each sample
                size = data.resolution.for_epoch(state.epoch)
                log.record("resolution", f"epoch {state.epoch}: training crop {size} px", epoch=state.epoch, size=size)
            watch.epoch_start(state.epoch)
            outcome, steps = train_epoch(
                state,
                train_loader,
                print_freq=run_control.print_freq,
                world_size=place.world_size,
                log=log,
                stop=stop,
                steps_left=left,
                key_log=key_log,
                bad=bad,
                meter=meter,
                cadence=cadence,  # without --save-every*: never due
                save=checkpoint_now,
            )
            steps_run += steps
            if outcome == "done":  # the loader ran out: the epoch is complete
                state.epoch, state.step_in_epoch, state.epoch_position = state.epoch + 1, 0, 0
                outcome = _validate(state, val_loader, stop, log, bad)
                watch.epoch_end(state.epoch - 1, state.module, state.device)  # summary.csv, best.pt
                too_many_bad = bad.agree()  # every rank, at each epoch end
                if outcome == "done" and state.epoch < epochs:
                    if too_many_bad:
                        outcome = "bad_records"
                    elif max_steps is not None and steps_run >= max_steps:
                        outcome = "max_steps"
                    elif stop.agreed():
                        outcome = "stopped"
            if outcome != "done" or state.epoch >= epochs:
                break
            checkpoint_now()  # each completed epoch
        if outcome == "stopped" and stop.fresh_agreed and not stop.agreed_signum:
            outcome = "max_steps" if max_steps is not None and steps_run >= max_steps else "fresh_process"
        checkpoint_now()
        if outcome == "fresh_process" and stop.agreed() and stop.agreed_signum:
            outcome = "stopped"  # a signal during the save: the run stops (SLURM's warning: requeue), saved
        if outcome == "done":
            watch.finish(state.module, state.device)  # weights.pt
        finished = True
    finally:
        watch.close()
        _log_speed(log, meter, outcome if finished else "error")
        if key_log is not None:
            key_log.close()
        for loader in (train_loader, val_loader):
            if loader is not None:
                loader.close()  # its workers ignore the signals that stop the run
    why = {
        "stopped": "stopped by a signal",
        "fresh_process": f"a DALI pipeline failed on a bad record (listed in {bad.path}); saved for a fresh "
        "process to continue (DALI may crash a pipeline built in a process where one failed)",
        "max_steps": f"--max-steps {max_steps} reached",
        "done": "all epochs done",
        "bad_records": f"stopped: {len(bad.known)} bad records, more than --max-bad-records "
        f"{run_control.max_bad_records} (listed in {bad.path})",
    }[outcome]
    more = f" --max-bad-records {len(bad.known) + run_control.max_bad_records}" if outcome == "bad_records" else ""
    log.record(
        "end",
        f"{why} at epoch {state.epoch} step {state.step_in_epoch} (global step {state.global_step}); "
        f"continue it with: {prog_name('train.py')} --resume auto --output-dir {config.output_dir}{more}"
        if outcome != "done"
        else why,
        reason=outcome,
        epoch=state.epoch,
        global_step=state.global_step,
    )
    log.close()
    if outcome == "fresh_process":
        if place.world_size == 1 and not config.dist.multiprocessing_distributed:
            raise FreshProcessWanted(config.output_dir, None if max_steps is None else max_steps - steps_run)
        return ExitCode.RESTART
    if outcome == "stopped":
        return for_signal(stop.agreed_signum)
    return ExitCode.BAD_RECORDS if outcome == "bad_records" else ExitCode.OK


def _log_speed(log: RunLog, meter: Speedometer, reason: str) -> None:
    """The run's figures, on every way out; after an error (``reason`` "error"), never an error of its own
    (the device may be what failed): the run's error is the one that counts."""
    try:
        log_speed(log, meter, reason)
    except Exception as exc:
        if reason != "error":
            raise
        warn(f"the run's speed is not logged: {type(exc).__name__}: {exc}")


def _error(message: object) -> None:
    print(f"{prog_name('train.py')}: error: {message}", file=sys.stderr, flush=True)


def _spawned(local_rank: int, config: RunConfig, procs: int, resume_from: str | None) -> None:
    dist = config.dist
    place = Placement(rank=dist.rank * procs + local_rank, world_size=dist.world_size * procs, local_rank=local_rank)
    code = _guarded(config, place, resume_from)
    if code:
        sys.exit(code)


def _guarded(config: RunConfig, place: Placement, resume_from: str | None) -> int:
    # from the start: a SIGTERM/SIGINT while the run starts stops it before training
    stop = StopSignal(config.dist.dist_timeout)
    try:
        return run(config, place, stop, resume_from)
    except ConfigError as exc:
        _error(exc)
        return ExitCode.USAGE
    except NonFiniteLossError as exc:
        if place.is_main:
            _error(exc)
        return ExitCode.DIVERGED
    finally:
        stop.restore()
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        flags = read_flags(argv)
        values = flags.values
        resume_from = resume_path(values.resume, values.output_dir)
        if resume_from:  # the run's own flags, but for what this command changes
            values = under_checkpoint(flags, saved_flags(checkpoint.load(resume_from, map_location="cpu")), resume_from)
        config = RunConfig.from_args(values)
        if config.dist.multiprocessing_distributed and config.dist.dist_url == "env://":
            default_rendezvous(multi_node=config.dist.world_size > 1)  # before the spawn: every child sees it
    except ConfigError as exc:
        _error(exc)
        return ExitCode.USAGE
    if config.dist.multiprocessing_distributed:
        procs = config.dist.procs_per_node or (torch.cuda.device_count() if config.cuda else 0) or 1
        try:
            torch.multiprocessing.spawn(_spawned, args=(config, procs, resume_from), nprocs=procs, join=True)
        except torch.multiprocessing.ProcessExitedException as exc:
            return exc.exit_code or ExitCode.ERROR
        return ExitCode.OK
    tasks = slurm_tasks_without_step()
    if tasks:
        warn(f"SLURM_NTASKS={tasks} but this process is not in an srun step: one process (srun starts {tasks})")
    try:
        return _guarded(config, placement_from_env(), resume_from)
    except FreshProcessWanted as wanted:
        if argv is None:  # the command, not a call from Python: this process becomes the continuation
            return continue_in_fresh_process(wanted)
        return ExitCode.RESTART
