"""``ImageFolderLMDB``: the database as a drop-in for ``torchvision.datasets.ImageFolder``."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from .database import ImageDatabase


def decode_rgb(payload: memoryview) -> Image.Image:
    """Decode to an RGB PIL image the way ImageFolder's loader does (EXIF orientation ignored)."""
    with Image.open(io.BytesIO(payload)) as image:
        return image.convert("RGB")


class ImageFolderLMDB(Dataset):
    """Images and labels from an lmdb_io database, with ImageFolder's attributes.

    ``classes``, ``class_to_idx``, ``targets`` and ``len()`` come from the database's index entries at
    construction, never from hard-coded sizes. The object pickles as its path and settings; each
    process (DataLoader workers under fork or spawn included) reads through its own shared LMDB
    Environment. ``samples`` lists (relative source path, label), like ImageFolder's (path, label).

    Differences from ImageFolder: ``root`` is the database directory; there is no ``loader`` (records are
    decoded with Pillow to RGB, as ImageFolder's default loader does) and no ``is_valid_file`` (the
    converter chose the files); ``verify=False`` skips the per-read checksum.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        verify: bool = True,
    ) -> None:
        self.root = os.fspath(root)
        self.transform = transform
        self.target_transform = target_transform
        self.db = ImageDatabase(self.root, verify=verify)
        self.classes: list[str] = self.db.classes
        self.class_to_idx: dict[str, int] = self.db.class_to_idx
        self.targets: list[int] = self.db.targets.tolist()

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        payload, target = self.db.read(index)
        sample = decode_rgb(payload)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.db.paths(), self.targets, strict=True))

    imgs = samples

    def __repr__(self) -> str:
        return f"ImageFolderLMDB({self.root!r}, {len(self)} images, {len(self.classes)} classes)"
