"""Bad records at training time, as the loaders report them to the trainer.

A record is bad when it fails its checksum or header check, when its image header claims more pixels
than ``lmdb_io.imagecheck`` allows (``lmdb_io.trainable``), or when it does not decode. A loader never lets
one stop the run: the sample at that position of the rank's epoch order is replaced by the next good
sample of the same order (``lmdb_io.reading.plan.replacement_positions``), so every rank still delivers the same
number of batches, the same way in every run; the replacement is marked as padding (a repeat evaluation
must not count); and the loader names the bad record in its ``bad_records`` (dataset index ->
``BadRecord``, in the order they were met), which the trainer reads after each batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BadRecord:
    """One bad record: its dataset index, LMDB key (or path relative to the tree), source path, and why."""

    index: int
    key: str
    path: str
    reason: str


def bad_records_of(loader: Any) -> Mapping[int, BadRecord]:
    """The bad records a loader has found so far (loaders that cannot replace any have none)."""
    found = getattr(loader, "bad_records", None)
    return found if isinstance(found, Mapping) else {}
