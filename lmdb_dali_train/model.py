"""The model and what trains it: a torchvision classifier (channels-last, DDP, compiled as asked), SGD
with the linearly scaled learning rate and its schedule, the loss and the fp16 grad scaler."""

from __future__ import annotations

from typing import cast

import torch
import torchvision
from torch import nn

from .config import ConfigError, RunConfig
from .distributed import Placement
from .engine import TrainState
from .schedule import SamplesLR


def check_arch(arch: str) -> None:
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise ConfigError(
            f"--arch {arch}: not a torchvision classification model (e.g. resnet18, resnet50, "
            f"vit_b_16; {len(names)} in all)"
        )


def build_model(arch: str, num_classes: int) -> nn.Module:
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def build_state(
    config: RunConfig, place: Placement, device: torch.device, num_classes: int, steps_per_epoch: int
) -> TrainState:
    """Model, optimizer and schedule for one rank, before any checkpoint is restored."""
    optim = config.optim
    module = build_model(optim.arch, num_classes).to(device)
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
    global_batch = optim.global_batch(place.world_size)
    optimizer = torch.optim.SGD(
        module.parameters(), lr=optim.scaled_lr(place.world_size), momentum=optim.momentum, weight_decay=optim.wd
    )
    scheduler = SamplesLR(
        optimizer,
        total_samples=optim.epochs * steps_per_epoch * global_batch,
        warmup_samples=int(optim.warmup_epochs * steps_per_epoch) * global_batch,
        global_batch=global_batch,
        kind=optim.lr_schedule,
    )
    return TrainState(
        model=model,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if config.amp_dtype == torch.float16 else None,
        criterion=nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing),
        device=device,
        amp_dtype=config.amp_dtype,
    )
