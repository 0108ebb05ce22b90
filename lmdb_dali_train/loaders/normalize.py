"""Where the torch loader's images become float: on the training device, not in the workers.

The DataLoader workers ship uint8 CHW crops (``lmdb_io.reading.presets``' transforms end in ``PILToTensor``):
a quarter of float32's bytes through shared memory, the pinned buffer and the host-to-device copy, as
DALI's PyTorch example and FFCV do. ``DeviceNormalizer`` copies each batch to the device (non-blocking
from pinned memory), converts it to float in the memory format the model runs in, subtracts the
preset's mean and divides by its std on DALI's 0-255 scale (the values of ``ToTensor`` then
``Normalize``, to float rounding), and casts to the dtype the trainer asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class DeviceNormalizer:
    """uint8 NCHW batch on the host -> normalised NCHW-shaped ``dtype`` images on ``device``."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"images are normalised to a floating-point dtype, not {dtype}")
        self.device, self.dtype = device, dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # on the 0-255 scale of the uint8 pixels; computed in float32 whatever the output dtype
        self.mean = torch.tensor([255 * m for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor([255 * s for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected a uint8 NCHW batch, got {images.dtype} of shape {tuple(images.shape)}")
        pixels = images.to(self.device, non_blocking=True)
        x = pixels.to(dtype=torch.float32, memory_format=self.memory_format)  # one pass: cast and layout
        x.sub_(self.mean).div_(self.std)
        return x if self.dtype == torch.float32 else x.to(self.dtype)
