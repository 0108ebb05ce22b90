"""How the pipelines hand their source to DALI's Python workers: plain pickle, and on arrival each worker
leaves SIGINT/SIGTERM to the trainer (``lmdb_io.reading.workers``). Given to DALI as ``py_callback_pickler``."""

from __future__ import annotations

import pickle
from typing import Any

from lmdb_io.reading.workers import ignore_stop_signals


def dumps(obj: Any, **kwargs: Any) -> bytes:
    return pickle.dumps(obj, **kwargs)


def loads(data: bytes, **kwargs: Any) -> Any:
    """In a worker, before it takes any task: see ``lmdb_io.reading.workers.ignore_stop_signals``."""
    ignore_stop_signals()
    return pickle.loads(data, **kwargs)
