"""Which models ``--arch`` names and where their first weights come from: a torchvision classification
model, or ``timm/NAME`` when timm is installed; initialised at random, or from ``--weights`` (a local
state dict: nothing is ever downloaded), with the classifier head re-initialised when the class count
differs, as fine-tuning needs."""

from __future__ import annotations

import os
from typing import Any

import torch
import torchvision
from torch import nn

from .errors import ConfigError

TIMM = "timm/"


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("--arch timm/...: timm is not installed (pip install timm, or '.[timm]')") from None
    return timm


def check_arch(arch: str) -> None:
    """ConfigError for a name that builds no model, before any data is read."""
    if arch.startswith(TIMM):
        if not _timm().is_model(arch[len(TIMM) :]):
            raise ConfigError(f"--arch {arch}: timm {_timm().__version__} has no model {arch[len(TIMM) :]!r}")
        return
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise ConfigError(
            f"--arch {arch}: not a torchvision classification model (e.g. resnet18, resnet50, vit_b_16; "
            f"{len(names)} in all), nor timm/NAME"
        )


def build_model(arch: str, num_classes: int) -> nn.Module:
    if arch.startswith(TIMM):
        model: nn.Module = _timm().create_model(arch[len(TIMM) :], pretrained=False, num_classes=num_classes)
        return model
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def load_weights(model: nn.Module, path: str) -> str:
    """Load the state dict at ``path`` (or a checkpoint's ``model``) into ``model``; the classifier head
    keeps its fresh initialisation when its shape differs. Returns the line that says what was loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"--weights {path}: not a torch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint of a run
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights {path}: not a state dict of tensors")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        raise ConfigError(
            f"--weights {path}: does not fit this model ({len(missing)} of its weights missing, "
            f"{len(unexpected)} unknown, e.g. {', '.join(names)}); is --arch the model they were trained as?"
        )
    other = [k for k in own if own[k].shape != state[k].shape]
    head = _head_prefix(model)
    if any(not k.startswith(head) for k in other):
        k = next(k for k in other if not k.startswith(head))
        shapes = f"{tuple(state[k].shape)}, the model's {tuple(own[k].shape)}"
        raise ConfigError(f"--weights {path}: {k} has shape {shapes}")
    model.load_state_dict({k: (own[k] if k in other else v) for k, v in state.items()})
    name = os.path.basename(path)
    if other:
        was, now = state[f"{head}weight"].shape[0], own[f"{head}weight"].shape[0]
        head_name = head.rstrip(".")
        return f"weights from {name}; the classifier head ({head_name}) re-initialised: {was} classes there, {now} here"
    return f"weights from {name}"


def _head_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the model's last linear layer (its classifier), e.g. ``fc.``."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return f"{linear[-1]}." if linear else "\0"
