"""Decode every record with DALI's CPU decoder, to find what would stop a training job hours in.

DALI runs in a spawned child process, never in the caller's: after a decoding error DALI 2.4 may crash
a later pipeline of the same process (seen here: SIGSEGV in ``Pipeline.build`` and ``Pipeline.run``
of the next check), and a decoder that crashes on a record must be a finding, not the end of
``verify``. The child decodes records in batches; a batch that fails is checked again one record at a
time, and after any failure the child is replaced by a fresh one, so every bad record is named and no
pipeline runs in a process where one has failed. What the decoder prints while it decodes (libjpeg's
"Corrupt JPEG data: ..." warnings: the image decodes, part of it lost) is captured from the child's
stderr and, through ``on_warning``, attributed to its record the same way.

Memory stays bounded: the parent reads each record's size from its header first (``lmdb_io.imagecheck``),
reports a record too large to decode without sending it, and closes a batch before its pixels would
exceed ``BATCH_PIXELS``.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np
from nvidia.dali import fn, pipeline_def, types  # here, so a missing DALI is an ImportError at once

from lmdb_io.database import ImageDatabase
from lmdb_io.errors import LmdbIoError
from lmdb_io.imagecheck import PIXEL_CAP, header_check

from .compat import no_exif_rotation, supported

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

# The child's answer to one batch: None if every record decoded, else the DALI error's first line; and
# what the decoder printed meanwhile
Answer = tuple[str | None, str]

# Pixels per batch handed to DALI (read at each call): one record at the cap, or many smaller ones; about
# 0.5 GB of decoded RGB. A record whose size cannot be read from its header counts as a full batch.
BATCH_PIXELS = PIXEL_CAP


def _reason(exc: RuntimeError) -> str:
    """The useful line of a DALI pipeline error (what the operator encountered), shortened."""
    text = str(exc).split("encountered:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Current pipeline object")] or ["RuntimeError"]
    return lines[0][:200]


def _child(path: str, batch_size: int, num_threads: int, device_id: int | None, conn: Connection) -> None:
    """Decode the batches of indices the parent sends; answer each; exit after the first failure. With
    ``device_id``, each record is also decoded on that GPU, by nvJPEG's CUDA path and by the hardware decoder
    (``hw_decoder_load`` 0 and 1), as a training pipeline there may send it either way."""

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        exec_async=False,
        exec_pipelined=False,
        prefetch_queue_depth=1,
    )
    def decode() -> Any:  # a DALI graph
        encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        args = dict(output_type=types.RGB, **no_exif_rotation("decoders__Image"))
        outputs = [fn.decoders.image(encoded, device="cpu", **args)]
        for load in (0.0, 1.0) if device_id is not None else ():
            gpu = supported("decoders__Image", hw_decoder_load=load)
            outputs.append(fn.decoders.image(encoded, device="mixed", **args, **gpu))
        return tuple(outputs)

    printed = tempfile.TemporaryFile()
    os.dup2(printed.fileno(), 2)  # the decoder's own messages (libjpeg writes to stderr), read per batch
    db = ImageDatabase(path)
    pipe = decode()
    pipe.build()
    seen = os.lseek(2, 0, os.SEEK_END)

    def said() -> str:
        nonlocal seen
        end = os.lseek(2, 0, os.SEEK_END)
        text = os.pread(2, end - seen, seen).decode(errors="replace") if end > seen else ""
        seen = end
        return " ".join(line.strip() for line in text.splitlines() if line.strip())

    while True:
        indices = conn.recv()
        if indices is None:
            return
        try:
            pipe.feed_input("encoded", [np.frombuffer(db.read(i)[0], dtype=np.uint8) for i in indices])
            pipe.run()
        except RuntimeError as exc:
            conn.send((_reason(exc), said()))
            return  # a process in which a pipeline failed runs no further pipeline
        conn.send((None, said()))


class _Worker:
    """The parent's handle on one child; ``check`` returns its answer, or raises ``_Crashed``."""

    def __init__(self, path: str, batch_size: int, num_threads: int, device_id: int | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")  # DALI cannot run in a forked child of a CUDA process
        self.conn, child_conn = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=_child,
            args=(path, batch_size, num_threads, device_id, child_conn),
            daemon=True,
            name="dali-decode-check",
        )
        self.process.start()
        child_conn.close()

    def check(self, indices: Sequence[int]) -> Answer:
        try:
            self.conn.send(list(indices))
            answer: Answer = self.conn.recv()
        except (EOFError, OSError):  # the child died without answering
            self.process.join()
            raise _Crashed(f"DALI's decoder crashed (exit code {self.process.exitcode})") from None
        return answer

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class _Crashed(Exception):
    pass


def undecodable_records(
    db: ImageDatabase,
    indices: Iterable[int],
    num_threads: int = 2,
    *,
    batch_size: int = 64,
    on_warning: Callable[[int, str], None] | None = None,
    device_id: int | None = None,
) -> list[tuple[int, str]]:
    """(index, reason) for each record among ``indices`` that DALI's CPU decoder rejects or crashes on, or
    that is too large to decode (reported from its header, never decoded), sorted by index. With
    ``device_id``, also those its GPU decoders on that device reject (in the child, never in the caller).

    A ``lmdb_io.verify.DecodeCheck``. Records that cannot be read (checksum, label) are left to the record
    checks that report them, and not sent to DALI.
    """
    bad: list[tuple[int, str]] = []
    budget = BATCH_PIXELS
    decoders = "CPU decoder" if device_id is None else f"CPU or GPU {device_id} decoders (nvJPEG, hardware)"
    worker: _Worker | None = None

    def ask(chunk: Sequence[int]) -> Answer:
        """The verdict on ``chunk``; a failed or crashed child is replaced before the next question."""
        nonlocal worker
        if worker is None:
            worker = _Worker(db.path, batch_size, num_threads, device_id)
        try:
            answer = worker.check(chunk)
        except _Crashed as exc:
            answer = (str(exc), "")
        if answer[0] is not None:
            worker.close()
            worker = None
        return answer

    def check(chunk: list[int]) -> None:
        reason, printed = ask(chunk)
        if reason is None and (not printed or on_warning is None):
            return
        for i in chunk:
            reason, printed = ask([i]) if len(chunk) > 1 else (reason, printed)
            if reason is not None:
                bad.append((i, f"record {db.key(i).decode()}: does not decode with DALI's {decoders} ({reason})"))
            elif printed and on_warning is not None:
                on_warning(i, printed)

    chunk: list[int] = []
    chunk_pixels = 0
    try:
        for index in indices:
            try:
                payload = db.read(index)[0]
            except LmdbIoError:
                continue  # a record check's finding, not the decoder's
            size, problem = header_check(payload)
            if problem:
                bad.append((index, f"record {db.key(index).decode()}: {problem}; not decoded"))
                continue
            pixels = budget if size is None else size[0] * size[1]
            if chunk and (len(chunk) == batch_size or chunk_pixels + pixels > budget):
                check(chunk)
                chunk, chunk_pixels = [], 0
            chunk.append(index)
            chunk_pixels += pixels
        if chunk:
            check(chunk)
    finally:
        if worker is not None:
            worker.close()
    return sorted(bad)
