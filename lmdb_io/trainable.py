"""Whether a record can be handed to a decoder: the checks a training loader makes on each read.

A record is bad when it fails its checksum or header check, or when its image header claims more pixels
than ``imagecheck.PIXEL_CAP`` allows or a side longer than a JPEG decoder takes (``imagecheck.too_large``,
checked before anything decodes it); a loader that then fails to decode it finds
it bad too. Loaders replace bad records instead of stopping the run (``lmdb_io.reading.bad_records``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import CorruptRecordError, LmdbIoError, NotADatabaseError
from .imagecheck import image_size, size_problem, sniff_format, without_addresses


class BadRecordError(LmdbIoError):
    """A record that cannot be trained on; the message is the reason, without the key."""


def reason(error: BaseException | str) -> str:
    """An error's first line, without a leading ``record 'KEY': `` (reports give the key its own column)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if text.startswith("record ") and ": " in text:
        text = text.split(": ", 1)[1]
    return without_addresses(text)[:300]


def read_checked(read: Callable[[int], tuple[Any, int]], index: int) -> tuple[Any, int]:
    """``read(index)``'s (encoded bytes, label), or ``BadRecordError`` if the record fails its checksum or
    header check or its image header claims too many pixels."""
    payload, label, _ = _read(read, index, sized=False)
    return payload, label


def read_sized(read: Callable[[int], tuple[Any, int]], index: int) -> tuple[Any, int, tuple[int, int]]:
    """``read_checked``'s (encoded bytes, label) and the image's (width, height) by its header, which a
    training crop is drawn for (``lmdb_io.reading.augment``); ``BadRecordError`` too when no header gives a
    size (then neither Pillow nor DALI decodes it)."""
    payload, label, size = _read(read, index, sized=True)
    assert size is not None
    return payload, label, size


def _read(read: Callable[[int], tuple[Any, int]], index: int, sized: bool) -> tuple[Any, int, tuple[int, int] | None]:
    try:
        payload, label = read(index)
    except (CorruptRecordError, NotADatabaseError) as exc:
        raise BadRecordError(reason(exc)) from None
    data = memoryview(payload)  # any buffer: a DALI source's numpy array too
    size = image_size(data) if len(data) else None
    if size is None:
        if sized:
            raise BadRecordError("does not decode: no image size in its header")
        return payload, label, None  # decoding decides
    problem = size_problem(size, sniff_format(data))
    if problem is not None:
        raise BadRecordError(problem)
    return payload, label, size
