"""``Batch``: what every loader yields (torchvision, DALI, synthetic), so the trainer never branches."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """Images and labels on the training device; dataset indices and the real-sample mask (False for
    padding, which evaluation must not count) on the host."""

    images: torch.Tensor  # N, C, H, W (memory may be channels-last)
    labels: torch.Tensor
    indices: torch.Tensor
    real: torch.Tensor
