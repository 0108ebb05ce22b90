"""train.py's body: placement, model, optimiser, resume, the epoch loop, checkpoints."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torchvision
from torch import nn

from lmdb_dali_train.loaders.batch import BatchLoader
from lmdb_io.reading.plan import RankPlan

from . import checkpoint
from .bad_records import BadRecordLog
from .config import EXIT_BAD_RECORDS, ConfigError, parse_args, resolution_schedule, validate
from .data import DatasetInfo, check_class_maps, describe_dataset, make_loader, require_dali
from .distributed import (
    Placement,
    all_reduce_max,
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
    StopSignal,
    TrainState,
    check_finite,
    evaluate,
    log_speed,
    train_epoch,
)
from .progname import prog_name
from .runlog import RunLog, warn
from .speed import Speedometer

EXIT_CONFIG = 2
EXIT_DIVERGED = 3  # the loss became NaN or infinite


def resolve_amp(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    if args.amp is None:
        if device.type != "cuda":
            args.amp = "off"
        else:
            args.amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[args.amp]


def check_arch(arch: str) -> None:
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise ConfigError(
            f"--arch {arch}: not a torchvision classification model (e.g. resnet18, resnet50, "
            f"vit_b_16; {len(names)} in all)"
        )


def build_model(arch: str, num_classes: int) -> nn.Module:
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def lr_schedule(total_steps: float, warmup_steps: float) -> Callable[[float], float]:
    """Linear warm-up from 0, then cosine decay to 0, as a multiplier of the base learning rate.

    ``step`` counts optimizer steps of one global batch; ``SamplesLR`` calls it with samples seen over the
    current global batch (a fraction after a resume on another one)."""

    def factor(step: float) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SamplesLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr_schedule`` by samples seen, not optimizer steps: each ``step()`` adds one global batch.

    Lengths are in samples (``total_samples``, ``warmup_samples``); the factor for the next step is
    ``lr_schedule(total / G, warmup / G)(seen / G)`` for the global batch ``G``, which on a run that keeps its
    batch is the step schedule exactly. A resume on another global batch (``resume_at``) keeps the samples
    seen, so the schedule continues where the data is, and the base lr is the one scaled to the new batch.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_samples: int, warmup_samples: int, global_batch: int
    ) -> None:
        self.total_samples, self.warmup_samples, self.global_batch = total_samples, warmup_samples, global_batch
        self.samples_seen = 0
        super().__init__(optimizer)

    def factor(self, samples_seen: int) -> float:
        g = self.global_batch
        return lr_schedule(self.total_samples / g, self.warmup_samples / g)(samples_seen / g)

    def get_lr(self) -> list[float | torch.Tensor]:
        return [base * self.factor(self.samples_seen) for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= 0:  # not the initial call from __init__: one more global batch was trained
            self.samples_seen += self.global_batch
        super().step(epoch)

    def resume_at(self, samples_seen: int, global_step: int) -> None:
        """Continue after ``samples_seen`` samples: the optimizer's lr (and initial_lr, both overwritten by its
        loaded state) become this run's base lr times the factor there."""
        self.samples_seen, self.last_epoch = samples_seen, global_step
        lrs = self.get_lr()
        for group, base, lr in zip(self.optimizer.param_groups, self.base_lrs, lrs, strict=True):
            group["initial_lr"], group["lr"] = base, lr
        self._last_lr = lrs


def _schedule(state: TrainState) -> SamplesLR:
    assert isinstance(state.scheduler, SamplesLR)  # build_state makes it
    return state.scheduler


def _args_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool)) or v is None}


def _resume_path(args: argparse.Namespace) -> str | None:
    """The checkpoint to resume from: --resume PATH as given (verified when loaded), or with --resume auto the
    newest one in --output-dir whose digest holds (one warning line for any newer one skipped)."""
    if not args.resume:
        return None
    if args.resume != "auto":
        return str(args.resume)
    path, skipped = checkpoint.latest_intact(args.output_dir)
    if path is None and skipped:
        newest, why = skipped[0]
        raise ConfigError(
            f"--resume auto: no intact checkpoint in {args.output_dir} ({len(skipped)} corrupt; newest "
            f"{os.path.basename(newest)}: {why})"
        )
    if skipped:
        names = ", ".join(os.path.basename(p) for p, _ in skipped)
        warn(f"--resume auto: skipping corrupt {names} ({skipped[0][1]}); resuming from {os.path.basename(str(path))}")
    return path


def _restore(
    state: TrainState,
    path: str,
    train_info: DatasetInfo | None,
    force: bool,
    log: RunLog,
    *,
    arch: str | None = None,
    world_size: int = 1,
) -> None:
    """Load ``path`` into ``state``; on another world size or batch size the position (samples of the epoch
    consumed) carries over, the lr is rescaled to this run's global batch and its schedule continues by
    samples seen. ConfigError for another dataset (unless ``force``), another ``arch``, a bad checkpoint."""
    # to the CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest onto the device
    saved = checkpoint.load(path, map_location="cpu")  # ConfigError on a foreign format or a bad digest
    saved_args = saved.get("args") or {}
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
    state.module.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scaler is not None and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    state.epoch, state.step_in_epoch, state.global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
    state.epoch_position = saved["epoch_position"]
    checkpoint.restore_rng(saved["rng"])
    schedule = _schedule(state)
    lr_before = saved["optimizer"]["param_groups"][0]["lr"]
    schedule.resume_at(saved["samples_seen"], state.global_step)
    lr_after = state.optimizer.param_groups[0]["lr"]
    batch = schedule.global_batch // world_size
    saved_world, saved_batch = saved.get("world_size"), saved_args.get("batch_size")
    if saved_world and saved_batch and saved_world * saved_batch != schedule.global_batch:
        lr_note = f"lr scaled from {lr_before:.6g} to {lr_after:.6g} (saved on {saved_world} ranks x {saved_batch})"
    else:
        lr_note = f"lr {lr_after:.6g} (same global batch)"
    log.info(
        f"resumed from {path}, global step {state.global_step}: at sample {state.epoch_position} of epoch "
        f"{state.epoch} on {world_size} ranks x {batch} ({schedule.samples_seen} samples seen): {lr_note}"
    )


def _save(state: TrainState, args: argparse.Namespace, train_info: DatasetInfo | None, place: Placement) -> None:
    """Rank 0 writes the checkpoint; every rank learns whether it failed (no rank left waiting at a barrier)."""
    check_finite(state)  # NaN weights are never saved (nor rotate a good checkpoint away)
    failure: ConfigError | None = None
    if place.is_main:
        try:
            _write_checkpoint(state, args, train_info, place)
        except ConfigError as exc:  # disk full, or the written file did not verify
            failure = exc
    failed = all_reduce_max(torch.tensor([1.0 if failure else 0.0], device=state.device)).item() > 0
    if failure is not None:
        raise failure
    if failed:
        raise ConfigError("rank 0 could not save the checkpoint (its error is in rank 0's output)")


def _write_checkpoint(
    state: TrainState, args: argparse.Namespace, train_info: DatasetInfo | None, place: Placement
) -> None:
    if place.is_main:
        path = checkpoint.save(
            args.output_dir,
            {
                "model": state.module.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "scaler": state.scaler.state_dict() if state.scaler is not None else {},
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "epoch_position": state.epoch_position,
                "global_step": state.global_step,
                "samples_seen": _schedule(state).samples_seen,
                "world_size": place.world_size,
                "args": _args_dict(args),
                "rng": checkpoint.rng_state(),
                "dataset": train_info.identity if train_info is not None else None,
            },
        )
        print(f"saved {path}", flush=True)


def build_state(
    args: argparse.Namespace,
    place: Placement,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    num_classes: int,
    steps_per_epoch: int,
) -> TrainState:
    """Model (channels-last, DDP, compiled as asked), SGD with the scaled learning rate, its schedule."""
    module = build_model(args.arch, num_classes).to(device)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model: nn.Module = module
    if place.distributed:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if args.compile:
        # given an nn.Module, torch.compile returns an OptimizedModule (an nn.Module); its stubs say Callable
        model = cast(nn.Module, torch.compile(model))
    optimizer = torch.optim.SGD(
        module.parameters(),
        lr=args.lr * args.batch_size * place.world_size / 256,
        momentum=args.momentum,
        weight_decay=args.wd,
    )
    global_batch = args.batch_size * place.world_size
    scheduler = SamplesLR(
        optimizer,
        total_samples=args.epochs * steps_per_epoch * global_batch,
        warmup_samples=int(args.warmup_epochs * steps_per_epoch) * global_batch,
        global_batch=global_batch,
    )
    return TrainState(
        model=model,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        device=device,
        amp_dtype=amp_dtype,
    )


def run(args: argparse.Namespace, place: Placement, stop: StopSignal) -> int:
    """One process's whole job; returns the exit code. ``stop``: installed by the caller at the start."""
    device = pick_device(args.device, place.local_rank)
    validate(args, cuda=device.type == "cuda")
    check_arch(args.arch)  # before any data is read: a typo fails at once
    amp_dtype = resolve_amp(args, device)
    if args.loader == "dali" and not args.synthetic:
        require_dali()
    train_info = describe_dataset(args.train, args.lmdb) if args.train else None
    val_info = describe_dataset(args.val, args.lmdb) if args.val else None
    if train_info is not None:
        check_class_maps(train_info, val_info, args.train, args.val)
    init_process_group(place, device, args.dist_backend, args.dist_url, args.dist_timeout)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input shapes: let cuDNN pick kernels
    log = RunLog(args.output_dir, enabled=place.is_main)
    if place.is_main and not args.evaluate:
        for stale in checkpoint.clean_stale_temps(args.output_dir):
            log.info(f"removed {stale}: the temporary file of a save that never finished")
    num_classes = len(train_info.classes) if train_info else (len(val_info.classes) if val_info else 1000)

    length = train_info.length if train_info else (val_info.length if val_info else 0)
    # a fresh epoch's batches per rank, by the plan the loaders follow (synthetic batches: 100 per epoch)
    steps_per_epoch = RankPlan(length, args.batch_size, world_size=place.world_size).num_batches(0) if length else 100
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{args.train or args.val}: {length} images over {place.world_size} processes give no "
            f"whole batch of {args.batch_size}; lower --batch-size"
        )
    state = build_state(args, place, device, amp_dtype, num_classes, steps_per_epoch)
    global_batch = args.batch_size * place.world_size
    resume_from = _resume_path(args)
    if resume_from:
        _restore(state, resume_from, train_info, args.force_resume, log, arch=args.arch, world_size=place.world_size)
    elif args.resume == "auto":
        log.info(f"--resume auto: no checkpoint in {args.output_dir}, starting fresh")
    log.record(
        "start",
        f"{args.arch} on {device} x{place.world_size}, loader {'synthetic' if args.synthetic else args.loader}"
        f", global batch {global_batch}, amp {args.amp}, {steps_per_epoch} steps/epoch",
        args=_args_dict(args),
        world_size=place.world_size,
        steps_per_epoch=steps_per_epoch,
    )

    def loader_for(path: str, train: bool, first_epoch: int = 0, skip: int = 0) -> BatchLoader:
        return make_loader(
            args,
            path,
            train,
            rank=place.rank,
            world_size=place.world_size,
            device=device,
            first_epoch=first_epoch,
            skip=skip,
            num_classes=num_classes,
            synthetic_steps=steps_per_epoch - state.step_in_epoch if train else steps_per_epoch,
        )

    val_loader = loader_for(args.val, False) if args.val else None
    bad = BadRecordLog(args.output_dir, args.max_bad_records, place.rank, place.is_main, log, stop.host_group)
    if args.evaluate:
        assert val_loader is not None  # validate() requires --val with --evaluate
        metrics = evaluate(state, val_loader, stop)
        bad.collect(val_loader, state.epoch, state.global_step)
        bad.agree()  # lists them; evaluation itself is complete
        if metrics is None:
            log.info("evaluation stopped by a signal: no metrics")
        else:
            log.record("val", _val_line(state.epoch, metrics), epoch=state.epoch, **metrics)
        log.close()
        _close_loader(val_loader)
        return 0
    return _fit(args, place, state, train_info, loader_for, val_loader, log, bad, stop)


def _val_line(epoch: int, m: dict[str, float]) -> str:
    return f"val epoch {epoch}: loss {m['loss']:.4f} top1 {m['top1']:.2f} top5 {m['top5']:.2f} ({m['count']} images)"


def _validate(
    state: TrainState, val_loader: BatchLoader | None, stop: StopSignal, log: RunLog, bad: BadRecordLog
) -> str:
    """At the end of an epoch (already counted in ``state``): "stopped" if a stop is agreed before or
    during validation, else "done" (with the metrics logged). An interrupted validation gives no metrics
    and is not redone by a resumed run, which goes on with the next epoch (``--evaluate --resume CKPT``
    measures that checkpoint)."""
    if stop.agreed():
        return "stopped"
    if val_loader is None:
        return "done"
    metrics = evaluate(state, val_loader, stop)
    bad.collect(val_loader, state.epoch - 1, state.global_step)
    if metrics is None:
        log.info(f"validation of epoch {state.epoch - 1} interrupted by the stop: no metrics")
        return "stopped"
    log.record("val", _val_line(state.epoch - 1, metrics), epoch=state.epoch - 1, **metrics)
    return "done"


def _fit(
    args: argparse.Namespace,
    place: Placement,
    state: TrainState,
    train_info: DatasetInfo | None,
    loader_for: Callable[..., BatchLoader],
    val_loader: BatchLoader | None,
    log: RunLog,
    bad: BadRecordLog,
    stop: StopSignal,
) -> int:
    if state.step_in_epoch and args.loader == "dali" and not args.lmdb and not args.synthetic:
        warn("DALI's file reader cannot resume mid-epoch: the interrupted epoch restarts from its beginning")
        state.step_in_epoch = state.epoch_position = 0
    train_loader = loader_for(args.train, True, state.epoch, state.epoch_position)
    resolution = resolution_schedule(args)  # progressive resizing, logged per epoch; None: --crop-size throughout
    key_log = None
    if args.log_keys and train_info is not None:
        os.makedirs(args.output_dir, exist_ok=True)
        key_log = KeyLog(os.path.join(args.output_dir, f"keys-rank{place.rank}.tsv"), train_info.key_of)
    steps_run = 0
    outcome = "stopped" if stop.agreed() else "done"  # a signal while the run was starting
    meter, finished = Speedometer(state.device, place.world_size), False
    try:
        while outcome == "done" and state.epoch < args.epochs:
            left = None if args.max_steps is None else args.max_steps - steps_run
            if resolution is not None:  # the loaders follow the same schedule, by the epoch of each sample
                size = resolution.for_epoch(state.epoch)
                log.record("resolution", f"epoch {state.epoch}: training crop {size} px", epoch=state.epoch, size=size)
            outcome, steps = train_epoch(
                state,
                train_loader,
                print_freq=args.print_freq,
                world_size=place.world_size,
                log=log,
                stop=stop,
                steps_left=left,
                key_log=key_log,
                bad=bad,
                meter=meter,
            )
            steps_run += steps
            if outcome == "done":  # the loader ran out: the epoch is complete
                state.epoch, state.step_in_epoch, state.epoch_position = state.epoch + 1, 0, 0
                outcome = _validate(state, val_loader, stop, log, bad)
                too_many_bad = bad.agree()  # every rank, at each epoch end
                if outcome == "done" and state.epoch < args.epochs:
                    if too_many_bad:
                        outcome = "bad_records"
                    elif args.max_steps is not None and steps_run >= args.max_steps:
                        outcome = "max_steps"
                    elif stop.agreed():
                        outcome = "stopped"
            if outcome != "done" or state.epoch >= args.epochs:
                break
            _save(state, args, train_info, place)  # each completed epoch
        _save(state, args, train_info, place)
        finished = True
    finally:
        _log_speed(log, meter, outcome if finished else "error")
        if key_log is not None:
            key_log.close()
        for loader in (train_loader, val_loader):
            _close_loader(loader)
    why = {
        "stopped": "stopped by a signal",
        "max_steps": f"--max-steps {args.max_steps} reached",
        "done": "all epochs done",
        "bad_records": f"stopped: {len(bad.known)} bad records, more than --max-bad-records {args.max_bad_records} "
        f"(listed in {bad.path})",
    }[outcome]
    log.record(
        "end",
        f"{why} at epoch {state.epoch} step {state.step_in_epoch} (global step {state.global_step}); "
        f"resume with --resume auto --output-dir {args.output_dir}"
        if outcome != "done"
        else why,
        reason=outcome,
        epoch=state.epoch,
        global_step=state.global_step,
    )
    log.close()
    return EXIT_BAD_RECORDS if outcome == "bad_records" else 0


def _log_speed(log: RunLog, meter: Speedometer, reason: str) -> None:
    """The run's figures, on every way out; after an error (``reason`` "error"), never an error of its own
    (the device may be what failed): the run's error is the one that counts."""
    try:
        log_speed(log, meter, reason)
    except Exception as exc:
        if reason != "error":
            raise
        warn(f"the run's speed is not logged: {type(exc).__name__}: {exc}")


def _close_loader(loader: BatchLoader | None) -> None:
    """Shut a loader's worker processes down (they ignore the signals that stop the run)."""
    if loader is not None:
        loader.close()


def _spawned(local_rank: int, args: argparse.Namespace, procs: int) -> None:
    place = Placement(rank=args.rank * procs + local_rank, world_size=args.world_size * procs, local_rank=local_rank)
    code = _guarded(args, place)
    if code:
        sys.exit(code)


def _guarded(args: argparse.Namespace, place: Placement) -> int:
    stop = StopSignal()  # from the start: a SIGTERM/SIGINT while the run starts stops it before training
    try:
        return run(args, place, stop)
    except ConfigError as exc:
        print(f"{prog_name('train.py')}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except NonFiniteLossError as exc:
        if place.is_main:
            print(f"{prog_name('train.py')}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    finally:
        stop.restore()
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.multiprocessing_distributed:
        procs = args.procs_per_node or (torch.cuda.device_count() if args.device != "cpu" else 0) or 1
        try:
            if args.dist_url == "env://":
                default_rendezvous(multi_node=args.world_size > 1)  # before the spawn: every child sees it
        except ConfigError as exc:
            print(f"{prog_name('train.py')}: error: {exc}", file=sys.stderr, flush=True)
            return EXIT_CONFIG
        try:
            torch.multiprocessing.spawn(_spawned, args=(args, procs), nprocs=procs, join=True)
        except torch.multiprocessing.ProcessExitedException as exc:
            return exc.exit_code or 1
        return 0
    tasks = slurm_tasks_without_step()
    if tasks:
        warn(f"SLURM_NTASKS={tasks} but this process is not in an srun step: one process (srun starts {tasks})")
    return _guarded(args, placement_from_env())
