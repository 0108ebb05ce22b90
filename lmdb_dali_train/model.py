"""What trains: the model (``architectures``; BlurPool, channels-last, DDP, compiled as asked), SGD or AdamW
with the linearly scaled learning rate and its schedule, the loss and the fp16 grad scaler."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .architectures import build_model, load_weights
from .blurpool import add_blurpool
from .config import OptimConfig, RunConfig
from .distributed import Placement
from .engine import TrainState
from .schedule import SamplesLR

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def param_groups(module: nn.Module, optim: OptimConfig) -> list[dict[str, object]]:
    """The optimizer's parameter groups: one, decayed by --wd; with --no-bn-weight-decay always two (so a
    checkpoint's group count does not depend on the model): every other parameter decayed, then the
    batch-norm layers' weights and biases (found by module type) not decayed."""
    params = list(module.parameters())
    if not optim.no_bn_weight_decay:
        return [{"params": params, "weight_decay": optim.wd}]
    norms = {id(p) for m in module.modules() if isinstance(m, BATCH_NORMS) for p in m.parameters(recurse=False)}
    return [
        {"params": [p for p in params if id(p) not in norms], "weight_decay": optim.wd},
        {"params": [p for p in params if id(p) in norms], "weight_decay": 0.0},
    ]


def build_optimizer(module: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(module, optim)
    if optim.opt == "adamw":  # decoupled weight decay; --momentum does not apply
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum)


def build_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, world_size: int, steps_per_epoch: int
) -> SamplesLR:
    """The --lr-schedule over --epochs of ``steps_per_epoch`` global batches, its warm-up --warmup-epochs."""
    global_batch = optim.global_batch(world_size)
    return SamplesLR(
        optimizer,
        total_samples=optim.epochs * steps_per_epoch * global_batch,
        warmup_samples=int(optim.warmup_epochs * steps_per_epoch) * global_batch,
        global_batch=global_batch,
        kind=optim.lr_schedule,
    )


def build_state(
    config: RunConfig, place: Placement, device: torch.device, num_classes: int, steps_per_epoch: int
) -> TrainState:
    """Model, optimizer and schedule for one rank, before any checkpoint is restored."""
    optim = config.optim
    module = build_model(optim.arch, num_classes)
    if optim.weights is not None:
        print(load_weights(module, optim.weights), flush=True)
    if optim.blurpool:  # config checked that it applies to --arch; after --weights, which name the plain convs
        add_blurpool(module)
    module = module.to(device)
    if optim.channels_last:
        module = module.to(memory_format=torch.channels_last)
    model: nn.Module = module
    if place.distributed:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if optim.compile:
        # given an nn.Module, torch.compile returns an OptimizedModule (an nn.Module); its stubs say Callable
        model = cast(nn.Module, torch.compile(model))
    optimizer = build_optimizer(module, optim, optim.scaled_lr(place.world_size))
    scheduler = build_schedule(optimizer, optim, place.world_size, steps_per_epoch)
    return TrainState(
        model=model,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if config.amp_dtype == torch.float16 else None,
        criterion=nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing),
        device=device,
        amp_dtype=config.amp_dtype,
        val_tta=config.data.val_tta,
    )
