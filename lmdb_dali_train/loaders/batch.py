"""The loader contract: every loader (torchvision, DALI, synthetic) yields ``Batch`` and knows its length,
so the trainer never branches on the loader."""

from __future__ import annotations

from collections.abc import Iterator
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
    (each ``iter()`` runs the next epoch)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def close(self) -> None: ...


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
