"""The train and validation presets both loaders follow: one definition of the augmentation.

``TrainPreset`` is torchvision's RandomResizedCrop (area 0.08-1, aspect 3/4-4/3, 10 attempts), a random
horizontal flip and ImageNet normalisation; each sample's crop and flip are drawn by
``lmdb_io.reading.augment.train_view`` from (seed, epoch, index), for both loaders. ``ValPreset`` resizes
the shorter side and center crops; its ``.torchvision()`` gives the torchvision transform up to uint8 CHW
pixels (what the DataLoader workers ship). The normalisation with the preset's mean and std happens on the
device (``lmdb_dali_train.loaders.normalize``). The DALI graphs in ``dali_pipeline.pipelines`` read the same
fields, so a change here changes both loaders. With progressive resizing the training crop is
``lmdb_io.reading.resolution``'s size of the epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .constants import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class TrainPreset:
    crop: int = 224
    area: tuple[float, float] = (0.08, 1.0)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    attempts: int = 10
    flip_probability: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ValPreset:
    crop: int = 224
    resize: int = 256  # the shorter side, before the center crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def torchvision(self) -> Callable[[Any], Any]:
        """PIL image -> uint8 CHW tensor."""
        from torchvision import transforms

        return transforms.Compose(
            [transforms.Resize(self.resize), transforms.CenterCrop(self.crop), transforms.PILToTensor()]
        )


Preset = TrainPreset | ValPreset


def preset_for(train: bool, crop: int = 224, val_resize: int = 256) -> Preset:
    return TrainPreset(crop=crop) if train else ValPreset(crop=crop, resize=val_resize)
