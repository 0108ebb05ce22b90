"""Loader worker processes leave SIGINT, SIGTERM and SIGUSR1 to the trainer.

torchrun, SLURM and a terminal's Ctrl-C signal a whole process group: the trainer and its loader workers
(DataLoader workers, DALI's Python workers) get the signal together. A worker that died of it would take
the trainer down before the ranks agree on a stop, so workers are born with both signals blocked
(``stop_signals_blocked`` around their creation: a fork or an exec keeps the signal mask) and, once
running, hand them to a thread (``ignore_stop_signals``) that drops them, except a SIGTERM from the
worker's own parent: the loader's shutdown (``Process.terminate``) still works. That thread also ends
the worker if its parent is gone, so no worker outlives a trainer killed outright.

Only the standard library: DALI's spawned workers import this module.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from collections.abc import Iterator

# SIGUSR1: the trainer's warning of a time limit (SLURM's --signal=USR1@120 signals every process of a step)
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGUSR1})
PARENT_CHECK_S = 1.0  # how often the watcher looks whether the parent is still there

_watched_in: int | None = None  # the process id the watcher thread runs in (a fork copies this)


@contextlib.contextmanager
def stop_signals_blocked(spawn: bool = False) -> Iterator[None]:
    """Block the stop signals in this thread while worker processes are started; they keep the mask.

    A signal that arrives meanwhile waits, and is delivered when the block ends. ``spawn``: workers are
    started by exec (multiprocessing's spawn or forkserver): its resource tracker is started first,
    since starting it unblocks both signals.
    """
    if spawn:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def parent_garbage_frozen() -> Iterator[None]:
    """While workers are forked: the parent's garbage stays out of their collector.

    A forked worker that collects an object the parent left in a reference cycle runs its finaliser in the
    worker; a DALI pipeline's shutdown there, without the pipeline's threads, crashes or hangs. Frozen
    objects are never collected in the worker; the parent collects them as usual once this ends.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def ignore_stop_signals(*_: object) -> None:
    """In a worker process: drop the stop signals, but end on its parent's SIGTERM or when the parent is
    gone. Once per process; the arguments are ignored (so it serves as a DataLoader ``worker_init_fn``)."""
    global _watched_in
    if _watched_in == os.getpid():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # this thread, and the threads it starts
    _watched_in = os.getpid()
    threading.Thread(target=_watch, args=(os.getppid(),), name="stop-signals", daemon=True).start()


def _watch(parent: int) -> None:
    while True:
        info = signal.sigtimedwait(STOP_SIGNALS, PARENT_CHECK_S)
        if info is not None and info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(128 + signal.SIGTERM)  # the loader shutting its workers down
        if os.getppid() != parent:
            os._exit(1)  # the trainer is gone
