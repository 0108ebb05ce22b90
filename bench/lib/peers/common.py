"""What the peer modules share: the image list they are built from, the torchvision transforms their
users write, and the ``Batch`` they hand to the timing loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmdb_dali_train.loaders.batch import Batch


@dataclass(frozen=True)
class Samples:
    """An ImageFolder tree as a list: ``files[i]`` of class ``labels[i]`` (``classes[label]`` its folder
    name), in ImageFolder's order (sorted classes, sorted files), so index i means the same image everywhere."""

    files: list[Path]
    labels: list[int]
    classes: list[str]

    @classmethod
    def from_tree(cls, root: Path) -> Samples:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        files, labels = [], []
        for label, name in enumerate(classes):
            for f in sorted((root / name).iterdir()):
                files.append(f)
                labels.append(label)
        if not files:
            raise SystemExit(f"no images under {root}")
        return cls(files, labels, classes)

    def __len__(self) -> int:
        return len(self.files)


def to_batch(images: torch.Tensor, labels: Any, indices: Any) -> Batch:
    """A peer's batch as the timing loop reads it (no padding: peers drop the last partial batch)."""
    labels, indices = torch.as_tensor(labels).reshape(-1), torch.as_tensor(indices).reshape(-1)
    return Batch(images, labels, indices, torch.zeros(len(labels), dtype=torch.bool))


class Batches:
    """A peer loader's (images, labels, indices) tuples as ``Batch`` es. No length: the streaming peers
    (WebDataset, LitData) know none, and the timing loop checks a length it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, indices in self.inner:
            yield to_batch(images, labels, indices)


class SizedBatches(Batches):
    """``Batches`` of a loader that announces its length (FFCV's ``Loader``)."""

    def __len__(self) -> int:
        return len(self.inner)


def tensor_transform(crop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW tensor -> normalised float32 CHW: the train preset in torchvision.transforms.v2."""
    from torchvision.transforms import v2

    from lmdb_io.reading.presets import TrainPreset

    p = TrainPreset(crop)
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop, scale=p.area, ratio=p.aspect_ratio, antialias=True),
            v2.RandomHorizontalFlip(p.flip_probability),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(p.mean, p.std),
        ]
    )
