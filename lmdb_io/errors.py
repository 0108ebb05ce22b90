"""Errors with one-line messages that name the file or key at fault.

Command-line entry points print ``str(error)`` and exit non-zero, no traceback: every message must make
sense on its own.
"""

import os
import sys


def convert_command() -> str:
    """The converter as this user runs it, for hints: ``lmdb-convert`` beside the installed commands
    (``lmdb-convert``, ``lmdb-io``, ``lmdb-train``), else the checkout's ``python convert.py``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "lmdb-convert" if invoked.startswith("lmdb-") else "python convert.py"


class LmdbIoError(Exception):
    """Base class: a problem the user can act on."""


class NotADatabaseError(LmdbIoError):
    """The path is not an LMDB written by lmdb_io (no LMDB at all, or a foreign one)."""


class IncompleteDatabaseError(LmdbIoError):
    """The conversion that wrote this database did not finish."""


class CorruptRecordError(LmdbIoError):
    """A stored record fails its header or checksum check."""


class ConvertError(LmdbIoError):
    """The converter cannot start or continue (bad input, bad output, changed dataset on resume)."""


class ConvertInterrupted(LmdbIoError):
    """Ctrl-C or SIGTERM during a conversion: what was committed stays, and --resume finishes the job."""
