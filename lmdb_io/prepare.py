"""Reading and checking source files in a thread pool, delivered in item order.

File I/O and Pillow release the GIL, so threads overlap them; results come back in order, so the
database is the same whatever the worker count. Each file is read straight into a buffer that leaves
room for the record header, so a stored JPEG is never copied. Its first bytes are read first: a file
that is no image, or one over ``MAX_FILE_BYTES``, is skipped without being read whole. Re-encoding
(``--max-size`` / ``--quality``, see ``reencode``) runs here too, in the same threads.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .imagecheck import UNIDENTIFIED, Action, describe_error, inspect_image, sniff_format
from .record import HEADER_SIZE, ImageFormat, encode_record, write_header
from .reencode import Reencode
from .sources import SourceList


@dataclass
class Prepared:
    """One file, read and checked by a worker thread: a ready record (header filled) or a skip."""

    action: Action
    reason: str
    record: bytearray | None
    bytes_in: int


MAX_FILE_BYTES = 2 << 30  # larger files are skipped unread (a record is one LMDB value, read whole)
SNIFF_BYTES = 64  # read first, to tell a file that is no image from one worth reading whole
_GROW_CHUNK = 1 << 16  # reads past the size fstat gave, for a file that grew while we read it


def _read_up_to(f: io.FileIO, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the file (a read may return less than asked)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _no_image(f: io.FileIO, head: bytes) -> bool:
    """Whether the file is no image, judged from its first bytes: no magic bytes we know, and Pillow
    (which reads only headers to identify a file) cannot identify it either. Anything else is read
    whole and judged by ``inspect_image``."""
    if not head or sniff_format(head) != ImageFormat.UNKNOWN:
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        f.seek(0)
        Image.open(f)
    except UnidentifiedImageError:
        return True
    except Exception:  # identified but odd: the full check says what is wrong with it
        return False
    return False


def _read_rest(f: io.FileIO, head: bytes, size: int) -> bytearray | None:
    """The whole file after HEADER_SIZE free bytes, read straight into place (no copy), reads repeated
    until the end of the file; None if it grew past MAX_FILE_BYTES while we read it."""
    buf = bytearray(HEADER_SIZE + max(size, len(head)))
    buf[HEADER_SIZE : HEADER_SIZE + len(head)] = head
    got = len(head)
    f.seek(got)
    with memoryview(buf) as view:
        while got < size:
            n = f.readinto(view[HEADER_SIZE + got :])
            if not n:
                break
            got += n
    if got < size:  # shrank while we read it
        del buf[HEADER_SIZE + got :]
        return buf
    while more := f.read(_GROW_CHUNK):  # grew while we read it
        if got + len(more) > MAX_FILE_BYTES:
            return None
        buf += more
        got += len(more)
    return buf


def _too_large(size: int) -> str:
    return f"larger than the {MAX_FILE_BYTES >> 30} GiB cap ({size} bytes)"


def _prepare(path: str, label: int, verify_decode: bool, keep_format: bool, reencode: Reencode) -> Prepared:
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            head = _read_up_to(f, SNIFF_BYTES)
            if _no_image(f, head):
                return Prepared(Action.SKIP, UNIDENTIFIED, None, size)
            if size > MAX_FILE_BYTES:
                return Prepared(Action.SKIP, _too_large(size), None, size)
            buf = _read_rest(f, head, size)
            if buf is None:
                return Prepared(Action.SKIP, _too_large(os.fstat(f.fileno()).st_size), None, size)
    except OSError as exc:
        return Prepared(Action.SKIP, f"cannot read: {exc.strerror}", None, 0)
    n = len(buf) - HEADER_SIZE
    data = memoryview(buf)[HEADER_SIZE:]
    verdict = inspect_image(data, verify_decode, keep_format, reencode)
    if verdict.action == Action.SKIP:
        return Prepared(Action.SKIP, verdict.reason, None, n)
    if verdict.action == Action.STORE_ORIGINAL:
        if reencode.active and reencode.wanted(verdict.size or (0, 0)):  # the size the checks read
            return _reencoded(data, label, reencode, n)
        return Prepared(verdict.action, verdict.reason, write_header(buf, label, verdict.image_format), n)
    assert verdict.payload is not None  # only a SKIP verdict has none
    return Prepared(verdict.action, verdict.reason, encode_record(verdict.payload, label, verdict.image_format), n)


def _reencoded(data: memoryview, label: int, reencode: Reencode, n: int) -> Prepared:
    """An original that ``reencode``'s settings change: its re-encoded record, or a skip if Pillow cannot
    decode it (the structural checks passed, the pixel data is broken)."""
    try:
        payload = reencode.reencode(data)
    except Exception as exc:  # Pillow raises many types for broken files
        return Prepared(Action.SKIP, f"cannot re-encode ({reencode.flags()}): {describe_error(exc)}", None, n)
    return Prepared(Action.STORE_REENCODED, "", encode_record(payload, label, ImageFormat.JPEG), n)


WINDOW_BYTES = 64 << 20  # files read ahead of the writer, so reading goes on while a batch commits
CHUNK = 8  # files per task: a thread-pool task costs ~16 us of the main thread's time


def _prepare_chunk(
    root: str, items: list[tuple[str, int]], verify_decode: bool, keep_format: bool, reencode: Reencode
) -> list[Prepared]:
    return [_prepare(os.path.join(root, rel), label, verify_decode, keep_format, reencode) for rel, label in items]


def prepare_in_order(
    pool: ThreadPoolExecutor,
    source: SourceList,
    start: int,
    workers: int,
    verify_decode: bool,
    keep_format: bool,
    reencode: Reencode,
) -> Iterator[tuple[int, Prepared]]:
    """(item index, prepared file) in item order; about WINDOW_BYTES of files in flight."""
    pending: deque = deque()
    min_window = 2 * max(1, workers)  # in chunks
    window, seen, seen_bytes = min_window, 0, 0
    items = source.items
    for first in range(start, len(items), CHUNK):
        chunk = items[first : first + CHUNK]
        pending.append((first, pool.submit(_prepare_chunk, source.root, chunk, verify_decode, keep_format, reencode)))
        while len(pending) >= window or (pending and first + CHUNK >= len(items)):
            j, fut = pending.popleft()
            for offset, prepared in enumerate(fut.result()):
                seen, seen_bytes = seen + 1, seen_bytes + prepared.bytes_in
                yield j + offset, prepared
            window = min(256, max(min_window, WINDOW_BYTES * seen // max(seen_bytes, 1) // CHUNK))
