"""``SyntheticLoader``: no input pipeline at all, the training speed ceiling (``train.py --synthetic``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .batch import Batch


class SyntheticLoader:
    """The same random batch, resident on the device, ``steps`` times per epoch."""

    def __init__(
        self,
        batch_size: int,
        crop: int,
        num_classes: int,
        steps: int,
        device: torch.device,
        channels_last: bool,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch_size, 3, crop, crop, generator=generator)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.images = images.to(device, dtype).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
        self.indices = torch.full((batch_size,), -1, dtype=torch.int64)
        self.padding = torch.zeros(batch_size, dtype=torch.bool)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.steps):
            yield Batch(self.images, self.labels, self.indices, self.padding)

    def close(self) -> None:
        """Nothing to shut down: no workers, no pipeline."""
