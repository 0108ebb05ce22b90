"""One shared read-only LMDB Environment per database path per process.

LMDB forbids opening the same path twice in one process, and a child created by fork must not use the
handle it inherited. So every reader in this package (datasets, the DALI source, the CLI) goes through
``shared_env``: the first call in a process opens the path, later calls reuse it, and a call from a
forked child closes the inherited handle and opens its own. Spawned workers start with an empty cache.
"""

from __future__ import annotations

import os
import threading

import lmdb

from .errors import NotADatabaseError

DATA_FILE = "data.mdb"

_envs: dict[str, tuple[int, lmdb.Environment]] = {}
_lock = threading.Lock()


def data_file(path: str | os.PathLike) -> str:
    """The LMDB data file of the database directory ``path``."""
    return os.path.join(path, DATA_FILE)


def is_database(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an LMDB directory (holds data.mdb): the one test every caller uses to tell a
    database from an ImageFolder tree. Whether it is a complete lmdb_io database is ``open_database``'s
    job, which explains what is wrong."""
    return os.path.isfile(data_file(path))


def _open_readonly(path: str) -> lmdb.Environment:
    if not os.path.exists(path):
        raise NotADatabaseError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        raise NotADatabaseError(f"{path}: not an LMDB database (expected a directory holding data.mdb)")
    if not is_database(path):
        raise NotADatabaseError(f"{path}: not an LMDB database (no data.mdb in it)")
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, map_size=0, subdir=True)
    except lmdb.Error as exc:
        raise NotADatabaseError(f"{path}: not a readable LMDB database ({exc})") from None
    try:
        _check_size(path, env)
    except BaseException:
        env.close()
        raise
    return env


def _check_size(path: str, env: lmdb.Environment) -> None:
    """Refuse a data.mdb shorter than its last used page: reading past the end of a memory-mapped file
    kills the process with SIGBUS. Both numbers come from the meta pages, at the start of the file."""
    expected = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = os.path.getsize(data_file(path))
    if actual < expected:
        raise NotADatabaseError(f"{path}: {DATA_FILE} is truncated ({actual} of {expected} bytes)")


def shared_env(path: str) -> lmdb.Environment:
    """The process-wide read-only Environment for ``path`` (opened on first use, reopened after fork)."""
    real = os.path.realpath(path)
    pid = os.getpid()
    entry = _envs.get(real)
    if entry is not None and entry[0] == pid:
        return entry[1]
    with _lock:
        entry = _envs.get(real)
        if entry is not None:
            if entry[0] == pid:
                return entry[1]
            try:  # inherited through fork: release our copy of the mapping before reopening
                entry[1].close()
            except lmdb.Error:
                pass
        env = _open_readonly(real)
        _envs[real] = (pid, env)
        return env


def close_shared_env(path: str) -> None:
    """Close this process's shared Environment for ``path`` (needed before rewriting the database)."""
    real = os.path.realpath(path)
    with _lock:
        entry = _envs.pop(real, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()
