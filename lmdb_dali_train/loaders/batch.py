"""The loader contract: every loader (torchvision, DALI, synthetic) yields ``Batch``, knows its length and
closes, so the trainer never branches on the loader; ``RunningEpoch`` is how each one holds the epoch in
progress."""

from __future__ import annotations

import weakref
from collections.abc import Generator, Iterator
from typing import NamedTuple, Protocol

import torch


class Batch(NamedTuple):
    """Images and labels on the training device; dataset indices and the padding mask on the host.

    ``images`` is always NCHW-shaped (its memory may be channels-last). ``padding`` is True for wrapped
    repeats (see ``lmdb_io.reading.plan``), which evaluation must not count; ``indices`` is -1 where a loader
    cannot say which sample it read (DALI's file reader, synthetic batches).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    padding: torch.Tensor


class BatchLoader(Protocol):
    """What the trainer needs of a loader: ``len()`` is the number of batches the next ``iter()`` yields
    (each ``iter()`` runs the next epoch); ``close()`` ends the epoch in progress and shuts the loader's
    worker processes down (they ignore the signals that stop the run); a second call does nothing."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def close(self) -> None: ...


class RunningEpoch:
    """A loader's epoch in progress, held weakly: the epoch's generator holds the loader, and a cycle would
    leave the loader's workers or pipeline to the garbage collector (which may run in a forked child, a
    DataLoader worker, where finalising a DALI pipeline crashes) instead of ending with its last reference.
    """

    def __init__(self) -> None:
        self._epoch: weakref.ref[Generator[Batch, None, None]] | None = None

    def start(self, epoch: Generator[Batch, None, None]) -> Generator[Batch, None, None]:
        """Hold ``epoch`` (what the loader's ``iter()`` returns) as the one in progress, and return it."""
        self._epoch = weakref.ref(epoch)
        return epoch

    def close(self) -> None:
        """End the epoch in progress, if one is still alive."""
        epoch = self._epoch() if self._epoch is not None else None
        if epoch is not None:
            epoch.close()
        self._epoch = None


def wants_fresh_process(loader: object) -> bool:
    """Whether ``loader`` can only go on slowly in this process (a ``DALILoader`` whose pipeline failed:
    its ``needs_fresh_process``); loaders that never fail that way do not."""
    return bool(getattr(loader, "needs_fresh_process", False))


def without_dali(loader: object) -> None:
    """Make ``loader`` run no DALI pipeline from now on where it can (a database's ``DALILoader``: its
    ``fall_back``, the CPU), as in a process where another DALI pipeline failed."""
    fall_back = getattr(loader, "fall_back", None)
    if fall_back is not None:
        fall_back()


class LoaderLengthError(RuntimeError):
    """A loader yielded a different number of batches than it announced."""


def counted(loader: BatchLoader, what: str = "loader") -> Iterator[Batch]:
    """Iterate one epoch of ``loader``, checking that it yields exactly ``len(loader)`` batches.

    A silent short epoch would be logged as a complete one; a long one would overrun the schedule.
    """
    announced = len(loader)
    seen = 0
    for batch in loader:
        seen += 1
        if seen > announced:
            raise LoaderLengthError(f"{what} announced {announced} batches and yielded more")
        yield batch
    if seen != announced:
        raise LoaderLengthError(f"{what} announced {announced} batches and yielded {seen}")
