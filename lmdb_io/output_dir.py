"""The conversion's output directory: refused when a conversion would clobber something, then locked.

Its own module because guarding ``OUT`` is a job apart from converting: the checks (not inside the
dataset, not a foreign directory, an LMDB to resume) and the exclusive lock that keeps a second converter
from interleaving its records with ours must all hold before the first record is read, and the lock
must be taken before ``--overwrite`` clears anything.
"""

from __future__ import annotations

import fcntl
import os

from .env import DATA_FILE, close_shared_env
from .errors import ConvertError

_LMDB_FILES = {DATA_FILE, "lock.mdb"}
LOCK_FILE = ".convert.lock"  # in OUT while a conversion runs; see OutputLock


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


class OutputLock:
    """An exclusive ``flock`` on ``OUT/.convert.lock`` held for a whole conversion, so that a second
    converter on the same output refuses instead of interleaving its records and index with ours.

    The lock file holds the holder's pid (for the refusal message) and is removed when the lock is
    released; a file left by a killed converter is not locked by anyone and is simply taken over.
    """

    def __init__(self, out: str, shown: str) -> None:
        self.path = os.path.join(out, LOCK_FILE)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConvertError(f"cannot write to output {shown}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise ConvertError(
                    f"output {shown} is being written by another conversion"
                    + (f" (pid {holder})" if holder.isdigit() else "")
                    + "; wait for it to finish or choose another output"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise ConvertError(f"cannot lock output {shown}: {exc.strerror}") from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its holder removed it between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        try:
            os.remove(self.path)  # while still locked: nobody can have locked a newer file yet
        except OSError:
            pass
        os.close(self._fd)


def prepare_output(output: str, dataset: str, *, resume: bool, overwrite: bool) -> OutputLock:
    """Refuse outputs that would clobber something; create the directory and lock it (which also proves
    it is writable); only then clear it for --overwrite. The caller releases the lock."""
    out = os.path.realpath(output)
    if os.path.isdir(dataset) and _inside(out, os.path.realpath(dataset)):
        raise ConvertError(f"output {output} is inside the dataset {dataset}: choose another place")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConvertError(f"output {output} exists and is not a directory")
    entries = set(os.listdir(out)) - {LOCK_FILE} if os.path.isdir(out) else set()
    if entries and not resume:
        if not overwrite:
            raise ConvertError(
                f"output {output} is not empty; pass --overwrite to replace it or --resume "
                f"to finish an interrupted conversion"
            )
        foreign = sorted(entries - _LMDB_FILES)
        if foreign:
            raise ConvertError(f"refusing to --overwrite {output}: it holds files that are not an LMDB ({foreign[0]})")
    if entries and resume and DATA_FILE not in entries:
        raise ConvertError(f"cannot --resume in {output}: it holds no LMDB (data.mdb)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ConvertError(f"cannot write to output {output}: {exc.strerror}") from None
    lock = OutputLock(out, output)
    if entries and not resume:
        try:
            close_shared_env(out)
            for name in entries:
                os.remove(os.path.join(out, name))
        except BaseException:
            lock.release()
            raise
    return lock
