"""Errors with one-line messages that name the file or key at fault.

Command-line entry points print ``str(error)`` and exit non-zero, no traceback: every message must make
sense on its own.
"""


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
