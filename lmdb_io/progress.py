"""What an unfinished conversion has committed, recorded in the database itself, so --resume can go on.

Its own module because this record is the converter's crash-safety: every write transaction rewrites
``__progress__`` (the counts and the job's fingerprint: constant size) and adds that batch's skipped and
transcoded files under one ``__progress_log__`` key, so whatever was committed before a crash, a Ctrl-C
or a full disk is known exactly, at a cost per commit that does not grow with the database. The final
transaction deletes these keys (``progress_keys``): a complete database holds none.
"""

from __future__ import annotations

import json

import lmdb

from . import schema
from .errors import ConvertError
from .report import ConvertReport

# the report's counts that ``__progress__`` keeps (a resume restores them)
COUNTS = ("scanned", "stored_original", "stored_reencoded", "stored_transcoded", "bytes_in", "bytes_out")


def load_progress(env: lmdb.Environment, output: str) -> tuple[dict, list[dict], list[dict]] | None:
    """An unfinished conversion's counts and its (skipped, transcoded) report entries; None if none."""
    with env.begin() as txn:
        raw = txn.get(schema.PROGRESS_KEY)
        if raw is None:
            if txn.get(schema.META_KEY) is None and txn.stat()["entries"]:
                raise ConvertError(f"output {output} holds an LMDB that lmdb_io did not write; refusing to touch it")
            return None
        skipped: list[dict] = []
        transcoded: list[dict] = []
        for _, value in _progress_log(txn):
            entries = json.loads(value)
            skipped += entries["skipped"]
            transcoded += entries["transcoded"]
    return json.loads(raw), skipped, transcoded


def _progress_log(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
    """The ``__progress_log__`` entries, in commit order."""
    cursor = txn.cursor()
    found: list[tuple[bytes, bytes]] = []
    if cursor.set_range(schema.PROGRESS_LOG_PREFIX):
        for key, value in cursor:
            if not bytes(key).startswith(schema.PROGRESS_LOG_PREFIX):
                break
            found.append((bytes(key), bytes(value)))
    return found


def progress_entries(
    report: ConvertReport, fingerprint: str, options: dict, commits: int, logged: tuple[int, int]
) -> list[tuple[bytes, bytes]]:
    """``__progress__`` (counts: constant size) and, when this batch skipped or transcoded files, one
    ``__progress_log__`` entry holding only those: each report entry is stored once."""
    counts = {name: getattr(report, name) for name in COUNTS}
    state = {"fingerprint": fingerprint, "options": options, "stored": report.stored, "commits": commits, **counts}
    entries = [(schema.PROGRESS_KEY, json.dumps(state).encode())]
    new_skipped, new_transcoded = report.skipped[logged[0] :], report.transcoded[logged[1] :]
    if new_skipped or new_transcoded:
        log = {"skipped": new_skipped, "transcoded": new_transcoded}
        entries.append((schema.progress_log_key(commits), json.dumps(log).encode()))
    return entries


def progress_keys(env: lmdb.Environment) -> tuple[bytes, ...]:
    """Every progress key the database holds (``__progress_log__`` ones, then ``__progress__``): what the
    final transaction deletes."""
    with env.begin() as txn:
        keys = [key for key, _ in _progress_log(txn)]
        if txn.get(schema.PROGRESS_KEY) is not None:
            keys.append(schema.PROGRESS_KEY)
    return tuple(keys)
