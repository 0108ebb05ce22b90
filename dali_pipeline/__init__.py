"""DALI pipelines over lmdb_io databases: GPU (``mixed``) decoding and augmentation, CPU fallback.

Importing this package needs DALI; ``lmdb_io`` alone does not.
"""

from .loader import DALILoader, make_dali_loader
from .pipelines import PipelineOptions, build_pipeline
from .source import LMDBSource

__all__ = ["DALILoader", "LMDBSource", "PipelineOptions", "build_pipeline", "make_dali_loader"]
