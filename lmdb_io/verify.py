"""Check every record of a database: header, checksum, label, and (optionally) that it decodes.

Pillow's decode is built in; other decoders (DALI's, which decides at training time) are passed in as
``DecodeCheck``s by the caller, so this storage package depends on no loader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from .database import ImageDatabase
from .errors import CorruptRecordError
from .imagecheck import too_large

# (database, indices to check, threads) -> (index, reason) for each record the decoder rejects
DecodeCheck = Callable[[ImageDatabase, Sequence[int], int], list[tuple[int, str]]]

WINDOW = 256  # records handed to the threads at a time: results and pending work stay small


@dataclass(frozen=True)
class VerifyResult:
    problems: list[tuple[int, str]]  # (index, one-line reason), sorted by index; an index may appear twice
    checked: str  # what was checked, for the summary line: "checksums and labels and decoding with Pillow"

    @property
    def bad_records(self) -> int:
        return len({index for index, _ in self.problems})


def check_record(db: ImageDatabase, index: int, decode: bool) -> str | None:
    """The first problem of record ``index`` (checksum, label, size, Pillow decode), or None.

    With ``decode``, a record too large to decode (``imagecheck.too_large``, from its header) is a
    problem found without decoding it."""
    try:
        payload, _ = db.read(index, verify=True)  # also checks the header's label against __targets__
    except CorruptRecordError as exc:
        return str(exc)
    if decode:
        problem = too_large(payload)
        if problem:
            return f"record {db.key(index).decode()}: {problem}; not decoded"
        from .dataset import decode_rgb

        try:
            decode_rgb(payload)
        except Exception as exc:  # any decoder failure is a finding, not a crash
            return f"record {db.key(index).decode()}: does not decode with Pillow: {exc}"
    return None


def verify_database(
    db: ImageDatabase,
    *,
    decode: bool = False,
    workers: int = 1,
    progress: bool = True,
    decode_checks: Sequence[tuple[str, DecodeCheck]] = (),
) -> VerifyResult:
    """Check every record; with ``decode``, decode with Pillow and then with each named ``decode_checks``.

    Every problem is listed, not only the first. Records go to the threads ``WINDOW`` at a time, so at
    most ``workers`` images are decoded at once, each within ``imagecheck.PIXEL_CAP``."""
    db.paths()  # the index entry that names images in messages: refuses a malformed __paths__ in one line
    problems: list[tuple[int, str]] = []
    with (
        ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(total=len(db), unit="img", desc="verify", disable=not progress, mininterval=0.5) as bar,
    ):
        for start in range(0, len(db), WINDOW):
            window = range(start, min(start + WINDOW, len(db)))
            for index, problem in zip(window, pool.map(lambda i: check_record(db, i, decode), window), strict=True):
                if problem:
                    problems.append((index, problem))
            bar.update(len(window))
    checked = "checksums and labels" + (" and decoding with Pillow" if decode else "")
    if decode:
        for name, check in decode_checks:
            problems += check(db, range(len(db)), max(1, workers))
            checked += f" and {name}"
    return VerifyResult(sorted(set(problems)), checked)  # a "too large" found by two checks is listed once
