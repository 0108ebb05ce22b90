"""LMDB image databases for ImageNet-style training: converter, records, readers and sharding.

``ImageFolderLMDB`` (a drop-in for ``torchvision.datasets.ImageFolder``) is imported lazily, so code
that only needs raw records (the DALI source) never imports torch or PIL.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .database import ImageDatabase, open_database
from .env import shared_env
from .errors import (ConvertError, CorruptRecordError, IncompleteDatabaseError, LmdbIoError,
                     NotADatabaseError)
from .record import ImageFormat
from .shard import Shard, shard_indices

__all__ = [
    "ConvertError", "CorruptRecordError", "ImageDatabase", "ImageFolderLMDB", "ImageFormat",
    "IncompleteDatabaseError", "LmdbIoError", "NotADatabaseError", "Shard", "open_database",
    "shard_indices", "shared_env", "__version__",
]


def __getattr__(name: str):
    if name == "ImageFolderLMDB":
        from .dataset import ImageFolderLMDB

        return ImageFolderLMDB
    raise AttributeError(f"module 'lmdb_io' has no attribute {name!r}")
