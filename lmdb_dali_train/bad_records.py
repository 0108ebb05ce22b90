"""Bad records met while training: named by key and source path in the log and in
``OUTPUT_DIR/bad-records.tsv``, and counted against ``--max-bad-records`` the same way on every rank.

The loaders replace each bad record by another sample of the rank's plan and name it in their ``bad_records``
(``lmdb_io.reading.bad_records``); ``collect`` takes the new ones after each batch. ``agree`` is a host-side
collective: every rank calls it at the same points (every ``BAD_RECORDS_SHARED_EVERY`` steps under DDP, every
step in one process, and at each epoch end), the ranks share what they met since, and rank 0 logs and lists
the records no rank had met before. The count is of distinct records (by split and key) in this run and
the runs it resumes: checkpoints carry the list (``saved``), a resumed run starts from it (``restore``) and
its loaders replace those records from the start (``indices``), so a record is met, listed and counted once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from lmdb_io.reading.bad_records import BadRecord, bad_records_of

from .runlog import RunLog

TSV_NAME = "bad-records.tsv"
TSV_COLUMNS = ("key", "path", "reason", "epoch", "step", "rank", "split")

# (record, epoch, global step, global rank, split: "train" or "val") of one meeting
Met = tuple[BadRecord, int, int, int, str]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _field(value: object) -> str:
    return " ".join(str(value).split())  # no tab or newline inside a TSV field


class BadRecordLog:
    def __init__(
        self,
        output_dir: str,
        limit: int,
        rank: int,
        main: bool,
        log: RunLog,
        host_group: Callable[[], dist.ProcessGroup | None] = lambda: None,
        datasets: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = os.path.join(output_dir, TSV_NAME)
        self.limit, self.rank, self.main, self.log = limit, rank, main, log
        self.host_group = host_group  # a gloo group for CPU tensors (``StopSignal.host_group``): no device sync
        self.datasets = dict(datasets or {})  # split -> the identity of the data read (``DatasetInfo.identity``)
        self.known: dict[tuple[str, str], BadRecord] = {}  # every rank's, by (split, key), as agreed
        self._pending: list[Met] = []  # met on this rank since the last agree()
        self._taken: dict[int, int] = {}  # id(loader) -> how many of its bad_records were collected

    @property
    def exceeded(self) -> bool:
        return len(self.known) > self.limit

    def due(self, steps: int, every: int) -> bool:
        """Whether ``agree`` runs after ``steps`` steps: every step in one process (no collective to pay
        for), every ``every`` steps under DDP."""
        return not _distributed() or steps % every == 0

    def collect(self, loader: Any, epoch: int, step: int, split: str = "train") -> None:
        """Take the bad records ``loader`` (reading ``split``) met since the last call (found while reading
        for ``step``)."""
        records = list(bad_records_of(loader).values())
        taken = self._taken.get(id(loader), 0)
        self._pending += [(record, epoch, step, self.rank, split) for record in records[taken:]]
        self._taken[id(loader)] = len(records)

    def saved(self) -> list[dict[str, Any]]:
        """The agreed records, as a checkpoint stores them: each with its split and that data's identity."""
        return [
            {"split": split, "dataset": self.datasets.get(split), **vars(record)}
            for (split, _), record in self.known.items()
        ]

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Start from a checkpoint's records (``saved``): known, counted, not listed again; those of a split
        now reading other data (a resumed run may take another --val) are left out."""
        for entry in saved:
            if entry.get("dataset") != self.datasets.get(entry["split"]):
                continue
            fields = {name: entry[name] for name in ("index", "key", "path", "reason")}
            self.known[(entry["split"], entry["key"])] = BadRecord(**fields)

    def indices(self, split: str) -> frozenset[int]:
        """The dataset indices of ``split``'s known bad records: a loader replaces them from the start."""
        return frozenset(record.index for (s, _), record in self.known.items() if s == split)

    def agree(self) -> bool:
        """Share the records every rank met since the last call; rank 0 logs and lists the new ones.
        Returns whether there are more than the limit (the same answer on every rank)."""
        pending, self._pending = self._pending, []
        met: list[Met] = pending
        if _distributed():
            group = self.host_group()
            count = torch.tensor([float(len(pending))])
            dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
            if count.item() > 0:
                parts: list[list[Met] | None] = [None] * dist.get_world_size()
                dist.all_gather_object(parts, pending, group=group)
                met = [m for part in parts if part for m in part]
        for record, epoch, step, rank, split in met:
            if (split, record.key) in self.known:  # known before, or met by two ranks in the same window
                continue
            self.known[(split, record.key)] = record
            if self.main:
                self._report(record, epoch, step, rank, split)
        return self.exceeded

    def _report(self, record: BadRecord, epoch: int, step: int, rank: int, split: str) -> None:
        fresh = not os.path.exists(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as tsv:
            if fresh:
                tsv.write("\t".join(TSV_COLUMNS) + "\n")
            row = (record.key, record.path, record.reason, epoch, step, rank, split)
            tsv.write("\t".join(_field(v) for v in row) + "\n")
        self.log.record(
            "bad_record",
            f"bad record {record.key} ({record.path}, {split}): {record.reason}; replaced by another sample of rank "
            f"{rank}'s plan (epoch {epoch}, step {step}; bad records so far: {len(self.known)})",
            key=record.key,
            path=record.path,
            reason=record.reason,
            epoch=epoch,
            step=step,
            rank=rank,
            split=split,
        )
