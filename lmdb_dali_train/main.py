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

from loaders.batch import BatchLoader
from loaders.plan import RankPlan

from . import checkpoint
from .config import ConfigError, parse_args, validate
from .data import DatasetInfo, check_class_maps, describe_dataset, make_loader, require_dali
from .distributed import (
    Placement,
    barrier,
    default_rendezvous,
    init_process_group,
    pick_device,
    placement_from_env,
    shutdown,
)
from .engine import KeyLog, StopSignal, TrainState, evaluate, train_epoch
from .progname import prog_name
from .runlog import RunLog, warn

EXIT_CONFIG = 2


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


def lr_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up from 0, then cosine decay to 0, as a multiplier of the base learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _args_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool)) or v is None}


def _resume_path(args: argparse.Namespace) -> str | None:
    if not args.resume:
        return None
    return checkpoint.latest(args.output_dir) if args.resume == "auto" else args.resume


def _restore(state: TrainState, path: str, train_info: DatasetInfo | None, force: bool, log: RunLog) -> None:
    saved = checkpoint.load(path, map_location=state.device)  # raises ConfigError on a foreign format
    if train_info is not None and saved.get("dataset") != train_info.identity:
        if not force:
            raise ConfigError(
                f"--resume {path}: the checkpoint was trained on a different dataset (class map, size "
                f"or database metadata differ); pass --force-resume to use it anyway"
            )
        warn(f"resuming {path} on a different dataset (--force-resume)")
    state.module.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if state.scaler is not None and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    state.epoch, state.step_in_epoch, state.global_step = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
    state.epoch_position = saved["epoch_position"]
    checkpoint.restore_rng(saved["rng"])
    log.info(
        f"resumed from {path}: epoch {state.epoch}, step {state.step_in_epoch} of it, global step {state.global_step}"
    )


def _save(state: TrainState, args: argparse.Namespace, train_info: DatasetInfo | None, place: Placement) -> None:
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
                "world_size": place.world_size,
                "args": _args_dict(args),
                "rng": checkpoint.rng_state(),
                "dataset": train_info.identity if train_info is not None else None,
            },
        )
        print(f"saved {path}", flush=True)
    barrier()


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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch))
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
    init_process_group(place, device, args.dist_backend, args.dist_url)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input shapes: let cuDNN pick kernels
    log = RunLog(args.output_dir, enabled=place.is_main)
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
        _restore(state, resume_from, train_info, args.force_resume, log)
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
    if args.evaluate:
        assert val_loader is not None  # validate() requires --val with --evaluate
        metrics = evaluate(state, val_loader, stop)
        if metrics is None:
            log.info("evaluation stopped by a signal: no metrics")
        else:
            log.record("val", _val_line(state.epoch, metrics), epoch=state.epoch, **metrics)
        log.close()
        _close_loader(val_loader)
        return 0
    return _fit(args, place, state, train_info, loader_for, val_loader, log, stop)


def _val_line(epoch: int, m: dict[str, float]) -> str:
    return f"val epoch {epoch}: loss {m['loss']:.4f} top1 {m['top1']:.2f} top5 {m['top5']:.2f} ({m['count']} images)"


def _validate(state: TrainState, val_loader: BatchLoader | None, stop: StopSignal, log: RunLog) -> str:
    """At the end of an epoch (already counted in ``state``): "stopped" if a stop is agreed before or
    during validation, else "done" (with the metrics logged). An interrupted validation gives no metrics
    and is not redone by a resumed run, which goes on with the next epoch (``--evaluate --resume CKPT``
    measures that checkpoint)."""
    if stop.agreed():
        return "stopped"
    if val_loader is None:
        return "done"
    metrics = evaluate(state, val_loader, stop)
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
    stop: StopSignal,
) -> int:
    if state.step_in_epoch and args.loader == "dali" and not args.lmdb and not args.synthetic:
        warn("DALI's file reader cannot resume mid-epoch: the interrupted epoch restarts from its beginning")
        state.step_in_epoch = state.epoch_position = 0
    train_loader = loader_for(args.train, True, state.epoch, state.epoch_position)
    key_log = None
    if args.log_keys and train_info is not None:
        os.makedirs(args.output_dir, exist_ok=True)
        key_log = KeyLog(os.path.join(args.output_dir, f"keys-rank{place.rank}.tsv"), train_info.key_of)
    steps_run = 0
    outcome = "stopped" if stop.agreed() else "done"  # a signal while the run was starting
    try:
        while outcome == "done" and state.epoch < args.epochs:
            left = None if args.max_steps is None else args.max_steps - steps_run
            outcome, steps = train_epoch(
                state,
                train_loader,
                print_freq=args.print_freq,
                world_size=place.world_size,
                log=log,
                stop=stop,
                steps_left=left,
                key_log=key_log,
            )
            steps_run += steps
            if outcome == "done":  # the loader ran out: the epoch is complete
                state.epoch, state.step_in_epoch, state.epoch_position = state.epoch + 1, 0, 0
                outcome = _validate(state, val_loader, stop, log)
                if outcome == "done" and state.epoch < args.epochs:
                    if args.max_steps is not None and steps_run >= args.max_steps:
                        outcome = "max_steps"
                    elif stop.agreed():
                        outcome = "stopped"
            if outcome != "done" or state.epoch >= args.epochs:
                break
            _save(state, args, train_info, place)  # each completed epoch
        _save(state, args, train_info, place)
    finally:
        if key_log is not None:
            key_log.close()
        for loader in (train_loader, val_loader):
            _close_loader(loader)
    why = {
        "stopped": "stopped by a signal",
        "max_steps": f"--max-steps {args.max_steps} reached",
        "done": "all epochs done",
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
    return 0


def _close_loader(loader: BatchLoader | None) -> None:
    """Shut a loader's worker processes down (they ignore the signals that stop the run)."""
    close = getattr(loader, "close", None)
    if close is not None:
        close()


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
    finally:
        stop.restore()
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.multiprocessing_distributed:
        procs = args.procs_per_node or (torch.cuda.device_count() if args.device != "cpu" else 0) or 1
        if args.dist_url == "env://":
            default_rendezvous()  # before the spawn, so every child sees the same address
        try:
            torch.multiprocessing.spawn(_spawned, args=(args, procs), nprocs=procs, join=True)
        except torch.multiprocessing.ProcessExitedException as exc:
            return exc.exit_code or 1
        return 0
    return _guarded(args, placement_from_env())
