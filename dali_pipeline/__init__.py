"""DALI pipelines over lmdb_io databases: GPU (``mixed``) decoding and augmentation, CPU fallback.

Names are imported on first use: ``dali_pipeline.source`` (the external-source callbacks) needs no DALI,
the pipelines and loader do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy exports below, for the type checker; at run time __getattr__ imports them
    # (``X as X``: an explicit re-export, since __all__ is built from _LAZY)
    from .loader import (
        DALIFolderLoader as DALIFolderLoader,
        DALILoader as DALILoader,
        make_dali_loader as make_dali_loader,
    )
    from .pipelines import PipelineOptions as PipelineOptions, build_pipeline as build_pipeline
    from .source import LMDBSource as LMDBSource, ShardedSource as ShardedSource

_LAZY = {
    "DALILoader": ".loader",
    "DALIFolderLoader": ".loader",
    "make_dali_loader": ".loader",
    "PipelineOptions": ".pipelines",
    "build_pipeline": ".pipelines",
    "LMDBSource": ".source",
    "ShardedSource": ".source",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dali_pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
