"""The loaders users pick instead of this project (FFCV, LitData, WebDataset): one module per peer with
``build`` (its files from ``Samples``) and ``loader`` (``make(seed)`` yielding ``Batch`` es)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmdb_dali_train.loaders.batch import Batch

from .. import BenchError

FLOAT = "float32 CHW"  # the output every contender delivers, ours included


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[package] set to None to block it
        return False


@dataclass(frozen=True)
class Peer:
    """A peer loader: the packages it needs, how its users run it, and its module."""

    key: str
    what: str
    how: str
    packages: tuple[str, ...]
    module: str

    def missing(self) -> str | None:
        """Why the peer cannot run here (a package it needs is not installed), or None."""
        absent = [p for p in self.packages if not _installed(p)]
        return f"not run: {', '.join(absent)} not installed (pip install '.[bench]')" if absent else None

    def build(self, samples: Samples, out: Path, **options: Any) -> Path:
        return importlib.import_module(f"{__name__}.{self.module}").build(samples, out, **options)

    def loader(self, path: Path, batch: int, crop: int, workers: int) -> Callable[[int], Iterable[Any]]:
        return importlib.import_module(f"{__name__}.{self.module}").loader(path, batch, crop, workers)


FFCV_HOW = "`ffcv.Loader(num_workers=cores, os_cache=True, order=RANDOM)`: RandomResizedCropRGBImageDecoder, "
FFCV_HOW += f"RandomHorizontalFlip, NormalizeImage to {FLOAT} (before ToTensor, ToTorchImage: the CPU order, "
FFCV_HOW += "libffcv/ffcv#396)"
LITDATA_HOW = "`litdata.optimize` the JPEG bytes, `StreamingDataset(shuffle=True)` + `StreamingDataLoader(num_workers="
LITDATA_HOW += f"cores)`: `torchvision.io.decode_jpeg`, RandomResizedCrop, flip, to {FLOAT}, Normalize"
WDS_HOW = "`wds.WebDataset(shards, shardshuffle).shuffle(1000).decode('pil')` + `DataLoader(num_workers=cores)`: "
WDS_HOW += f"RandomResizedCrop, flip, ToTensor, Normalize to {FLOAT}"
LITDATA = "LitData `StreamingDataset` (torchvision decode)"
PEERS: dict[str, Peer] = {
    "ffcv": Peer("ffcv", "FFCV", FFCV_HOW, ("ffcv", "cv2", "numba"), "ffcv_peer"),
    "litdata": Peer("litdata", LITDATA, LITDATA_HOW, ("litdata",), "litdata_peer"),
    "wds": Peer("wds", "WebDataset tar shards + DataLoader (PIL)", WDS_HOW, ("webdataset",), "wds_peer"),
}


@dataclass(frozen=True)
class Samples:
    """An ImageFolder tree as a list in ImageFolder's order, so index i means the same image everywhere."""

    files: list[Path]
    labels: list[int]
    classes: list[str]

    @classmethod
    def from_tree(cls, root: Path) -> Samples:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        found = [(f, label) for label, name in enumerate(classes) for f in sorted((root / name).iterdir())]
        if not found:
            raise BenchError(f"no images under {root}")
        return cls([f for f, _ in found], [label for _, label in found], classes)

    def __len__(self) -> int:
        return len(self.files)


class Batches:
    """A peer loader's (images, labels, indices) as ``Batch`` es (no length: the streaming peers know none)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, indices in self.inner:
            labels, indices = torch.as_tensor(labels).reshape(-1), torch.as_tensor(indices).reshape(-1)
            yield Batch(images, labels, indices, torch.zeros(len(labels), dtype=torch.bool))


class SizedBatches(Batches):
    """``Batches`` of a loader that announces its length (FFCV's ``Loader``)."""

    def __len__(self) -> int:
        return len(self.inner)


def tensor_transform(crop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW tensor -> normalised float32 CHW: the train preset in torchvision.transforms.v2."""
    from torchvision.transforms import v2

    from lmdb_io.reading.presets import TrainPreset

    p = TrainPreset(crop)
    crop_op = v2.RandomResizedCrop(crop, scale=p.area, ratio=p.aspect_ratio, antialias=True)
    flip, to_float = v2.RandomHorizontalFlip(p.flip_probability), v2.ToDtype(torch.float32, scale=True)
    return v2.Compose([crop_op, flip, to_float, v2.Normalize(p.mean, p.std)])
