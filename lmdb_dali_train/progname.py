"""The name a command was started by, for ``--help``, ``--version`` and error lines."""

from __future__ import annotations

import os
import sys

_SCRIPTS = {"convert.py", "train.py", "lmdb-convert", "lmdb-io", "lmdb-train"}


def prog_name(default: str) -> str:
    """``train.py``, ``lmdb-train`` or ``python -m lmdb_dali_train``: whichever started this process; else
    ``default`` (in-process callers, tests)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if invoked == "__main__.py":
        return f"python -m {__package__}"
    return invoked if invoked in _SCRIPTS else default
