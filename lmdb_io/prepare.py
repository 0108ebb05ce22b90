"""Reading and checking source files in a thread pool, delivered in item order.

File I/O and Pillow release the GIL, so threads overlap them; results come back in order, so the
database is the same whatever the worker count. Each file is read straight into a buffer that leaves
room for the record header, so a stored JPEG is never copied.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .imagecheck import Action, inspect_image
from .record import HEADER_SIZE, encode_record, write_header
from .sources import SourceList


@dataclass
class Prepared:
    """One file, read and checked by a worker thread: a ready record (header filled) or a skip."""

    action: Action
    reason: str
    record: bytearray | None
    bytes_in: int


def _read_file(path: str) -> bytearray:
    """The file's bytes after HEADER_SIZE free bytes, read straight into place (no copy)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(HEADER_SIZE + size)
        got = f.readinto(memoryview(buf)[HEADER_SIZE:])
        if got < size:  # shrank while we read it
            del buf[HEADER_SIZE + got :]
        else:
            buf += f.read()  # grew while we read it
    return buf


def _prepare(path: str, label: int, verify_decode: bool, keep_format: bool) -> Prepared:
    try:
        buf = _read_file(path)
    except OSError as exc:
        return Prepared(Action.SKIP, f"cannot read: {exc.strerror}", None, 0)
    n = len(buf) - HEADER_SIZE
    verdict = inspect_image(memoryview(buf)[HEADER_SIZE:], verify_decode, keep_format)
    if verdict.action == Action.SKIP:
        return Prepared(Action.SKIP, verdict.reason, None, n)
    if verdict.action == Action.STORE_ORIGINAL:
        return Prepared(verdict.action, verdict.reason, write_header(buf, label, verdict.image_format), n)
    assert verdict.payload is not None  # only a SKIP verdict has none
    return Prepared(verdict.action, verdict.reason, encode_record(verdict.payload, label, verdict.image_format), n)


WINDOW_BYTES = 64 << 20  # files read ahead of the writer, so reading goes on while a batch commits
CHUNK = 8  # files per task: a thread-pool task costs ~16 us of the main thread's time


def _prepare_chunk(root: str, items: list[tuple[str, int]], verify_decode: bool, keep_format: bool) -> list[Prepared]:
    return [_prepare(os.path.join(root, rel), label, verify_decode, keep_format) for rel, label in items]


def prepare_in_order(
    pool: ThreadPoolExecutor, source: SourceList, start: int, workers: int, verify_decode: bool, keep_format: bool
) -> Iterator[tuple[int, Prepared]]:
    """(item index, prepared file) in item order; about WINDOW_BYTES of files in flight."""
    pending: deque = deque()
    min_window = 2 * max(1, workers)  # in chunks
    window, seen, seen_bytes = min_window, 0, 0
    items = source.items
    for first in range(start, len(items), CHUNK):
        chunk = items[first : first + CHUNK]
        pending.append((first, pool.submit(_prepare_chunk, source.root, chunk, verify_decode, keep_format)))
        while len(pending) >= window or (pending and first + CHUNK >= len(items)):
            j, fut = pending.popleft()
            for offset, prepared in enumerate(fut.result()):
                seen, seen_bytes = seen + 1, seen_bytes + prepared.bytes_in
                yield j + offset, prepared
            window = min(256, max(min_window, WINDOW_BYTES * seen // max(seen_bytes, 1) // CHUNK))
