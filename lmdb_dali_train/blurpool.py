"""BlurPool for torchvision ResNets, as FFCV's ImageNet recipe uses it (``--blurpool``).

A strided convolution samples its input at every other pixel and so aliases; blurring the input first
with a fixed 3x3 binomial filter ([1, 2, 1] x [1, 2, 1] / 16, one per channel, stride 1, zero padding 1)
makes the network more shift-invariant (Zhang, "Making Convolutional Networks Shift-Invariant Again",
2019). As FFCV's ``train_imagenet.py`` does, every ``Conv2d`` with a stride over 1 and at least 16 input
channels is wrapped, the convolution itself unchanged: in a torchvision ResNet that is the first block of
``layer2``-``layer4`` (its strided 3x3 convolution and its 1x1 ``downsample`` one), not the RGB stem. The
wrapper's state-dict names (``<conv>.conv.weight``, ``<conv>.blur_filter``) are FFCV's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCH_PREFIXES = ("resnet", "resnext", "wide_resnet")  # torchvision's ResNet family: where --blurpool applies
MIN_CHANNELS = 16  # FFCV leaves convolutions with fewer input channels (the RGB stem) alone


def applies_to(arch: str) -> bool:
    return arch.startswith(ARCH_PREFIXES)


class BlurPoolConv2d(nn.Module):
    """``conv`` applied to its input blurred by a per-channel 3x3 binomial filter (a fixed buffer)."""

    blur_filter: torch.Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / taps.sum() ** 2  # sums to 1: a flat image stays flat
        self.conv = conv
        self.register_buffer("blur_filter", kernel.expand(conv.in_channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter.to(x.dtype), padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def add_blurpool(model: nn.Module) -> list[str]:
    """Wrap every strided convolution of ``model`` with at least ``MIN_CHANNELS`` input channels in place;
    returns the wrapped modules' names."""
    wrapped: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= MIN_CHANNELS:
                setattr(parent, name, BlurPoolConv2d(child))
                wrapped.append(prefix + name)
            else:
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    return wrapped
