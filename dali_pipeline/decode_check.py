"""Decode every record with DALI's CPU decoder, to find what would stop a training job hours in.

Records are decoded in batches; a batch that fails is retried one record at a time in a fresh
pipeline (DALI pipelines do not recover from an operator error), so every bad record is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from lmdb_io.database import ImageDatabase

from .compat import no_exif_rotation

if TYPE_CHECKING:
    from nvidia.dali.data_node import DataNode
    from nvidia.dali.pipeline import Pipeline


@pipeline_def
def _decode_pipeline() -> DataNode:
    encoded = fn.external_source(name="encoded", dtype=types.UINT8)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB, **no_exif_rotation("decoders__Image"))


class _Decoder:
    """One CPU decode pipeline, rebuilt after a failure (a failed DALI pipeline stays failed)."""

    def __init__(self, batch_size: int, num_threads: int) -> None:
        self.batch_size, self.num_threads = batch_size, num_threads
        self.pipe: Pipeline | None = None
        self.failed: list[Pipeline] = []

    def decodes(self, payloads: Sequence[np.ndarray]) -> bool:
        if self.pipe is None:
            self.pipe = _decode_pipeline(
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                device_id=None,
                exec_async=False,
                exec_pipelined=False,
                prefetch_queue_depth=1,
            )
            self.pipe.build()
        try:
            self.pipe.feed_input("encoded", list(payloads))
            self.pipe.run()
            return True
        except RuntimeError:
            # Destroying a failed pipeline while building the next one crashes DALI 2.4 at random
            # (seen here: SIGSEGV in Pipeline.outputs); failures are few, so keep them to the end.
            self.failed.append(self.pipe)
            self.pipe = None
            return False


def undecodable_records(
    db: ImageDatabase, indices: Iterable[int], batch_size: int = 64, num_threads: int = 2
) -> list[tuple[int, str]]:
    """(index, reason) for each record among ``indices`` that DALI's CPU decoder rejects."""
    decoder = _Decoder(batch_size, num_threads)
    bad: list[tuple[int, str]] = []
    chunk: list[int] = []

    def check(chunk: list[int]) -> None:
        payloads = [np.frombuffer(db.read(i)[0], dtype=np.uint8) for i in chunk]
        if decoder.decodes(payloads):
            return
        for i, payload in zip(chunk, payloads, strict=True):
            if not decoder.decodes([payload]):
                bad.append((i, f"record {db.key(i).decode()}: does not decode with DALI's CPU decoder"))

    for index in indices:
        chunk.append(index)
        if len(chunk) == batch_size:
            check(chunk)
            chunk = []
    if chunk:
        check(chunk)
    return bad
