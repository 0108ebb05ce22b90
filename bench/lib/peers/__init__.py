"""The loaders users pick instead of this project (FFCV, LitData, WebDataset), as comparison rows for
``bench.loaders``: one module per peer, each with ``build`` (its dataset files from an image list) and
``loader`` (a fresh loader yielding ``lmdb_dali_train.loaders.batch.Batch``). A peer whose package is missing is a row
that says "not run: <reason>" (``missing``), so the bench runs on a clone without the ``bench`` extra."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Samples


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[package] set to None to block it
        return False


@dataclass(frozen=True)
class Peer:
    """A peer loader: the packages it needs, how its users run it, and its two functions (module paths,
    imported only when the packages are there)."""

    key: str
    what: str
    how: str
    packages: tuple[str, ...]
    module: str

    def missing(self) -> str | None:
        """Why the peer cannot run here (a package it needs is not installed), or None."""
        absent = [p for p in self.packages if not _installed(p)]
        return f"not run: {', '.join(absent)} not installed (pip install '.[bench]')" if absent else None

    def _mod(self) -> Any:
        return importlib.import_module(f"{__name__}.{self.module}")

    def build(self, samples: Samples, out: Path, **options: Any) -> Path:
        """Write the peer's dataset files for ``samples`` under ``out``; returns what ``loader`` reads."""
        return self._mod().build(samples, out, **options)

    def loader(self, path: Path, batch: int, crop: int, workers: int) -> Callable[[int], Iterable[Any]]:
        """``make(seed)``: a loader over ``path`` yielding ``Batch`` es of float32 CHW images."""
        return self._mod().loader(path, batch, crop, workers)


FLOAT = "float32 CHW"  # the output every contender delivers, ours included
PEERS: dict[str, Peer] = {
    p.key: p
    for p in (
        Peer(
            "ffcv",
            "FFCV",
            "`ffcv.Loader(num_workers=cores, os_cache=True, order=RANDOM)`: RandomResizedCropRGBImageDecoder, "
            f"RandomHorizontalFlip, NormalizeImage to {FLOAT} (before ToTensor, ToTorchImage: the CPU order, "
            "libffcv/ffcv#396)",
            ("ffcv", "cv2", "numba"),
            "ffcv_peer",
        ),
        Peer(
            "litdata",
            "LitData `StreamingDataset` (torchvision decode)",
            "`litdata.optimize` the JPEG bytes, `StreamingDataset(shuffle=True)` + `StreamingDataLoader(num_workers="
            f"cores)`: `torchvision.io.decode_jpeg`, RandomResizedCrop, flip, to {FLOAT}, Normalize",
            ("litdata",),
            "litdata_peer",
        ),
        Peer(
            "wds",
            "WebDataset tar shards + DataLoader (PIL)",
            "`wds.WebDataset(shards, shardshuffle).shuffle(1000).decode('pil')` + `DataLoader(num_workers=cores)`: "
            f"RandomResizedCrop, flip, ToTensor, Normalize to {FLOAT}",
            ("webdataset",),
            "wds_peer",
        ),
    )
}
