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
from .imagecheck import header_check, without_addresses


class BadRecordError(LmdbIoError):
    """A record that cannot be trained on; the message is the reason, without the key."""


def reason(error: BaseException | str) -> str:
    """An error's first line, without a leading ``record 'KEY': `` (reports give the key its own column)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if text.startswith("record ") and ": " in text:
        text = text.split(": ", 1)[1]
    return without_addresses(text)[:300]


def read_checked(
    read: Callable[[int], tuple[Any, int]], index: int, sized: bool = False
) -> tuple[Any, int, tuple[int, int] | None]:
    """``read(index)``'s (encoded bytes, label) and the image's (width, height) by its header (None: no
    header gives one, decoding decides), or ``BadRecordError`` if the record fails its checksum or header
    check or its image header claims too many pixels. ``sized``: a training crop is drawn for the size
    (``lmdb_io.reading.augment``), so a record without one is bad too (neither Pillow nor DALI decodes it)."""
    try:
        payload, label = read(index)
    except (CorruptRecordError, NotADatabaseError) as exc:
        raise BadRecordError(reason(exc)) from None
    size, problem = header_check(payload) if len(payload) else (None, None)
    if problem is not None:
        raise BadRecordError(problem)
    if size is None and sized:
        raise BadRecordError("does not decode: no image size in its header")
    return payload, label, size
