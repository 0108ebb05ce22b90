"""LMDB image databases for ImageNet-style training: converter, records, readers and sharding.

Names are imported on first use, so ``convert.py`` starts without numpy and code that only needs raw
records (the DALI source) never imports torch or PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .errors import ConvertError, CorruptRecordError, IncompleteDatabaseError, LmdbIoError, NotADatabaseError  # noqa: E402

_LAZY = {
    "ImageDatabase": ".database",
    "open_database": ".database",
    "shared_env": ".env",
    "ImageFormat": ".record",
    "Shard": ".shard",
    "shard_indices": ".shard",
    "ImageFolderLMDB": ".dataset",
}

__all__ = [
    "ConvertError",
    "CorruptRecordError",
    "IncompleteDatabaseError",
    "LmdbIoError",
    "NotADatabaseError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmdb_io' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
