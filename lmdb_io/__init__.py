"""LMDB image databases for ImageNet-style training: the format, the converter, and readers.

Names are imported on first use, so ``convert.py`` starts without numpy and code that only needs raw
records (the DALI source) never imports torch or PIL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import ConvertError, CorruptRecordError, IncompleteDatabaseError, LmdbIoError, NotADatabaseError

if TYPE_CHECKING:  # the lazy exports below, for the type checker; at run time __getattr__ imports them
    # (``X as X``: an explicit re-export, since __all__ is built from _LAZY)
    from .database import ImageDatabase as ImageDatabase, open_database as open_database
    from .dataset import ImageFolderLMDB as ImageFolderLMDB
    from .env import is_database as is_database, shared_env as shared_env
    from .record import ImageFormat as ImageFormat

_LAZY = {
    "ImageDatabase": ".database",
    "open_database": ".database",
    "shared_env": ".env",
    "is_database": ".env",
    "ImageFormat": ".record",
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
