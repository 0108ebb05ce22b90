"""Every exit code of the project's commands (``lmdb-convert``/``convert.py``, ``lmdb-io``,
``lmdb-train``/``train.py``), each defined once; the README's table lists them.

A stop by a signal (Ctrl-C's SIGINT, a scheduler's SIGTERM, or for the trainer the SIGUSR1 a scheduler
sends as a warning before a time limit, SLURM's ``--signal=USR1@120``) is handled the same way by every command: it
keeps what is done (the converter's committed images, the trainer's checkpoint), then exits 128 + the
signal's number, as a shell reports a process the signal ended. The work is not complete, so a script
(``train.py ... && upload``) must not go on as if it were; ``--resume`` continues it.
"""

from __future__ import annotations

import enum
import signal


@enum.unique
class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # an unexpected error: Python's traceback says where
    USAGE = 2  # a bad flag, path or input, named in one line on stderr (argparse's own code)
    DIVERGED = 3  # lmdb-train: the loss became NaN or infinite; nothing is saved
    BAD_RECORDS = 4  # lmdb-train: more than --max-bad-records; lmdb-io verify: records failed a check
    RESTART = 75  # lmdb-train, several processes: a DALI pipeline failed on a record; saved: start them again
    INTERRUPTED = 128 + signal.SIGINT  # 130: stopped by SIGINT (Ctrl-C), what is done kept
    WARNED = 128 + signal.SIGUSR1  # 138: lmdb-train stopped by SIGUSR1 (a time limit ahead), saved: requeue it
    TERMINATED = 128 + signal.SIGTERM  # 143: stopped by SIGTERM, what is done kept


def for_signal(signum: int) -> ExitCode:
    """The exit code of a command stopped, cleanly, by ``signum`` (SIGINT, SIGTERM or SIGUSR1)."""
    return ExitCode(128 + signum)
