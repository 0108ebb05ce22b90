"""ImageFolder tree (or file list) -> one LMDB, streaming, resumable, with a report of every file.

The decisions (what goes in, under which key, what a resume may reuse) and the orchestration live here;
reading and checking files is ``prepare``'s job, fast writing ``writer``'s. Records go out in batched
write transactions; each also rewrites ``__progress__`` (counts and the fingerprint of the job) and
adds that batch's skipped and transcoded files under one ``__progress_log__`` key, so whatever was
committed before a crash, a Ctrl-C or a full disk is known exactly and ``--resume`` continues from
there, at a cost per commit that does not grow with the database. The index entries are written in the
final transaction: a database without them is incomplete.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import lmdb
from tqdm import tqdm

from . import __version__, pathtext, schema
from .database import open_database
from .env import DATA_FILE, close_shared_env
from .errors import ConvertError, ConvertInterrupted
from .imagecheck import Action
from .prepare import prepare_in_order
from .record import HEADER_SIZE
from .reencode import Reencode
from .sources import SourceList, read_file_list, scan_image_folder
from .writer import Writer, tune_malloc

_LMDB_FILES = {DATA_FILE, "lock.mdb"}
LOCK_FILE = ".convert.lock"  # in OUT while a conversion runs; see OutputLock
_COUNTS = ("scanned", "stored_original", "stored_reencoded", "stored_transcoded", "bytes_in", "bytes_out")
# the options that decide a database's content, and the flag that sets each (named when a resume differs)
_OPTION_FLAGS = {
    "keep_format": "--keep-format",
    "verify_decode": "--verify-decode",
    "max_size": "--max-size",
    "quality": "--quality",
}


@dataclass
class ConvertOptions:
    dataset: str
    output: str
    file_list: str | None = None
    classes_from: str | None = None
    workers: int = min(16, 2 * (os.cpu_count() or 1))
    verify_decode: bool = False
    keep_format: bool = False
    overwrite: bool = False
    resume: bool = False
    commit_every: int = 1000
    commit_bytes: int = 16 << 20  # small commits keep reading and writing overlapped (measured best here)
    progress: bool = True
    max_size: int | None = None  # store images with a longer side over this downscaled to it (reencode.py)
    quality: int | None = None  # re-encode every image as an RGB JPEG at this quality (reencode.py)

    @property
    def reencode(self) -> Reencode:
        return Reencode(self.max_size, self.quality)


@dataclass
class ConvertReport:
    """Counts cover the whole database, earlier runs included; ``reused`` is what earlier runs stored."""

    output: str
    scanned: int = 0
    stored_original: int = 0
    stored_reencoded: int = 0  # originals re-encoded under --max-size / --quality (counted, not listed)
    stored_transcoded: int = 0
    skipped: list[dict] = field(default_factory=list)
    transcoded: list[dict] = field(default_factory=list)
    reused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    @property
    def stored(self) -> int:
        return self.stored_original + self.stored_reencoded + self.stored_transcoded

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rate = (self.scanned - self.reused) / self.seconds if self.seconds else 0.0
        mbs = self.bytes_in / 1e6 / self.seconds if self.seconds and not self.reused else 0.0
        line = (
            f"{self.output}: stored {self.stored} images ({self.stored_original} original, "
            f"{self.stored_reencoded} re-encoded, {self.stored_transcoded} transcoded), skipped {len(self.skipped)}"
        )
        if self.reused:
            line += f", reused {self.reused} from the interrupted run"
        line += (
            f"; {self.bytes_in / 1e6:.1f} MB in, {self.bytes_out / 1e6:.1f} MB out; "
            f"{self.seconds:.1f} s ({rate:.0f} img/s"
        )
        return line + (f", {mbs:.0f} MB/s)" if mbs else ")")


# -- output directory -------------------------------------------------------------------------------


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


class OutputLock:
    """An exclusive ``flock`` on ``OUT/.convert.lock`` held for a whole conversion, so that a second
    converter on the same output refuses instead of interleaving its records and index with ours.

    The lock file holds the holder's pid (for the refusal message) and is removed when the lock is
    released; a file left by a killed converter is not locked by anyone and is simply taken over.
    """

    def __init__(self, out: str, shown: str) -> None:
        self.path = os.path.join(out, LOCK_FILE)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConvertError(f"cannot write to output {shown}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise ConvertError(
                    f"output {shown} is being written by another conversion"
                    + (f" (pid {holder})" if holder.isdigit() else "")
                    + "; wait for it to finish or choose another output"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise ConvertError(f"cannot lock output {shown}: {exc.strerror}") from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its holder removed it between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        try:
            os.remove(self.path)  # while still locked: nobody can have locked a newer file yet
        except OSError:
            pass
        os.close(self._fd)


def _prepare_output(opts: ConvertOptions) -> OutputLock:
    """Refuse outputs that would clobber something; create the directory and lock it (which also proves
    it is writable); only then clear it for --overwrite. The caller releases the lock."""
    out = os.path.realpath(opts.output)
    if os.path.isdir(opts.dataset) and _inside(out, os.path.realpath(opts.dataset)):
        raise ConvertError(f"output {opts.output} is inside the dataset {opts.dataset}: choose another place")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConvertError(f"output {opts.output} exists and is not a directory")
    entries = set(os.listdir(out)) - {LOCK_FILE} if os.path.isdir(out) else set()
    if entries and not opts.resume:
        if not opts.overwrite:
            raise ConvertError(
                f"output {opts.output} is not empty; pass --overwrite to replace it or --resume "
                f"to finish an interrupted conversion"
            )
        foreign = sorted(entries - _LMDB_FILES)
        if foreign:
            raise ConvertError(
                f"refusing to --overwrite {opts.output}: it holds files that are not an LMDB ({foreign[0]})"
            )
    if entries and opts.resume and DATA_FILE not in entries:
        raise ConvertError(f"cannot --resume in {opts.output}: it holds no LMDB (data.mdb)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ConvertError(f"cannot write to output {opts.output}: {exc.strerror}") from None
    lock = OutputLock(out, opts.output)
    if entries and not opts.resume:
        try:
            close_shared_env(out)
            for name in entries:
                os.remove(os.path.join(out, name))
        except BaseException:
            lock.release()
            raise
    return lock


# -- reading and checking files ---------------------------------------------------------------------


# -- writing ----------------------------------------------------------------------------------------


def _load_progress(env: lmdb.Environment, output: str) -> tuple[dict, list[dict], list[dict]] | None:
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


def _options_record(opts: ConvertOptions) -> dict:
    """The options that decide the content, as ``__meta__`` and ``__progress__`` record them."""
    return {
        "keep_format": opts.keep_format,
        "verify_decode": opts.verify_decode,
        "schema_version": schema.SCHEMA_VERSION,
        **opts.reencode.to_meta(),
    }


def _options_fingerprint(opts: ConvertOptions) -> dict:
    """The options part of the job's fingerprint: settings left unset are left out, so a database made
    before they existed still resumes (its fingerprint is unchanged)."""
    return {key: value for key, value in _options_record(opts).items() if value is not None}


def _changed_flag(recorded: object, opts: ConvertOptions, out: str, what: str) -> None:
    """Refuse a --resume whose content options differ from the ``recorded`` ones, naming the first flag
    that differs; no-op when they agree or were not recorded (databases from before they were)."""
    if not isinstance(recorded, dict):
        return
    current = _options_record(opts)
    for key, flag in _OPTION_FLAGS.items():
        was, now = recorded.get(key), current[key]
        if (was or None) != (now or None):  # False and None both mean "not given"
            raise ConvertError(
                f"cannot --resume {out}: {flag} differs from the {what} ({_shown(was)} there, {_shown(now)} "
                f"now); rerun with the same {flag} or use --overwrite to rebuild"
            )


def _shown(value: object) -> str:
    if value is None or value is False:
        return "not given"
    return "given" if value is True else str(value)


def load_source(opts: ConvertOptions) -> SourceList:
    classes_from = open_database(opts.classes_from).classes if opts.classes_from else None
    if opts.file_list:
        return read_file_list(opts.dataset, opts.file_list, classes_from)
    return scan_image_folder(opts.dataset, classes_from)


def convert(opts: ConvertOptions) -> ConvertReport:
    """Run (or resume) one conversion; raises LmdbIoError subclasses with one-line messages.

    ``opts.max_size`` / ``opts.quality`` (``--max-size`` / ``--quality``) store images downscaled and/or
    re-encoded (see ``reencode``); by default every stored file keeps its bytes."""
    opts.reencode.check(opts.keep_format)
    started = time.perf_counter()
    tune_malloc()
    source = load_source(opts)
    lock = _prepare_output(opts)
    try:
        report = _convert_locked(opts, source)
    finally:
        lock.release()
    report.seconds = time.perf_counter() - started
    return report


def _convert_locked(opts: ConvertOptions, source: SourceList) -> ConvertReport:
    out = opts.output
    fingerprint = source.fingerprint(_options_fingerprint(opts))
    width = schema.key_width(len(source.items))
    close_shared_env(out)  # LMDB allows one handle per path per process: drop our read-only one
    writer = Writer(out)
    env = writer.env
    try:
        report = ConvertReport(output=out)
        progress = _load_progress(env, out) if opts.resume else None
        if opts.resume and progress is None and env.stat()["entries"]:
            with env.begin() as txn:  # complete already: nothing to redo if it is this job's database
                meta_raw = txn.get(schema.META_KEY)
                assert meta_raw is not None  # _load_progress refused entries without __meta__
                meta = json.loads(meta_raw)
            _changed_flag(meta.get("options"), opts, out, "complete database there")
            if meta.get("fingerprint") != fingerprint:
                why = "differ from" if "fingerprint" in meta else "cannot be checked against (no fingerprint in)"
                raise ConvertError(
                    f"cannot --resume {out}: the dataset's file list, classes or options {why} the complete "
                    f"database there; use --overwrite to rebuild it"
                )
            counts = meta["counts"]
            report.scanned, report.reused = counts["scanned"], counts["images"]
            report.stored_original = counts["stored_original"]
            report.stored_reencoded = counts.get("stored_reencoded", 0)
            report.stored_transcoded = counts["stored_transcoded"]
            # the recorded count includes the scan's skipped directories (listed again now), not the files
            files = counts["skipped"] - len(source.skipped)
            report.skipped = source.skipped + [{"path": "?", "reason": "skipped by the earlier run"}] * files
            return report
        start = commits = 0
        if progress is not None:
            counts, report.skipped, report.transcoded = progress
            _changed_flag(counts.get("options"), opts, out, "interrupted run")
            if counts["fingerprint"] != fingerprint:
                raise ConvertError(
                    f"cannot --resume {out}: the dataset's file list, classes or options differ from "
                    f"the interrupted run; use --overwrite to start over"
                )
            for name in _COUNTS:
                setattr(report, name, counts.get(name, 0))  # a count added since that run was 0 then
            report.reused = report.stored
            start, commits = counts["scanned"], counts["commits"]
        _convert_items(writer, source, start, commits, width, fingerprint, opts, report)
        _finish(writer, source, width, fingerprint, opts, report)
    finally:
        writer.close()
    return report


def _progress_entries(
    report: ConvertReport, fingerprint: str, options: dict, commits: int, logged: tuple[int, int]
) -> list[tuple[bytes, bytes]]:
    """``__progress__`` (counts: constant size) and, when this batch skipped or transcoded files, one
    ``__progress_log__`` entry holding only those: each report entry is stored once."""
    counts = {name: getattr(report, name) for name in _COUNTS}
    state = {"fingerprint": fingerprint, "options": options, "stored": report.stored, "commits": commits, **counts}
    entries = [(schema.PROGRESS_KEY, json.dumps(state).encode())]
    new_skipped, new_transcoded = report.skipped[logged[0] :], report.transcoded[logged[1] :]
    if new_skipped or new_transcoded:
        log = {"skipped": new_skipped, "transcoded": new_transcoded}
        entries.append((schema.progress_log_key(commits), json.dumps(log).encode()))
    return entries


def _convert_items(
    writer: Writer,
    source: SourceList,
    start: int,
    commits: int,
    width: int,
    fingerprint: str,
    opts: ConvertOptions,
    report: ConvertReport,
) -> None:
    batch: list[tuple[bytes, bytes | bytearray]] = []
    batch_bytes = 0
    since_commit = 0
    logged = (len(report.skipped), len(report.transcoded))
    options = _options_record(opts)
    run_started = time.perf_counter()
    run_bytes = 0

    def commit() -> None:
        nonlocal batch, batch_bytes, since_commit, commits, logged
        commits += 1
        try:
            writer.put_all(batch + _progress_entries(report, fingerprint, options, commits, logged))
        except lmdb.Error as exc:
            raise ConvertError(
                f"cannot write to {opts.output}: {exc}; {report.stored - len(batch)} images are "
                f"committed, free the cause and rerun with --resume"
            ) from None
        batch, batch_bytes, since_commit = [], 0, 0
        logged = (len(report.skipped), len(report.transcoded))

    bar = tqdm(
        total=len(source.items),
        initial=start,
        unit="img",
        disable=not opts.progress,
        desc="convert",
        dynamic_ncols=True,
        mininterval=0.5,
    )
    pool = ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="convert")
    try:
        prepared_files = prepare_in_order(
            pool, source, start, opts.workers, opts.verify_decode, opts.keep_format, opts.reencode
        )
        for index, prepared in prepared_files:
            rel = source.items[index][0]
            report.scanned += 1
            report.bytes_in += prepared.bytes_in
            run_bytes += prepared.bytes_in
            if prepared.action == Action.SKIP:
                report.skipped.append({"path": rel, "reason": prepared.reason})
            else:
                if prepared.action == Action.STORE_ORIGINAL:
                    report.stored_original += 1
                elif prepared.action == Action.STORE_REENCODED:
                    report.stored_reencoded += 1
                else:
                    report.stored_transcoded += 1
                    report.transcoded.append({"path": rel, "reason": prepared.reason})
                record = prepared.record
                assert record is not None  # only a SKIP has no record
                batch.append((schema.make_key(report.stored - 1, width), record))
                batch_bytes += len(record)
                report.bytes_out += len(record) - HEADER_SIZE
            since_commit += 1
            if since_commit >= opts.commit_every or batch_bytes >= opts.commit_bytes:
                commit()
            bar.update(1)
            if bar.n % 64 == 0:
                bar.set_postfix_str(
                    f"{run_bytes / 1e6 / max(time.perf_counter() - run_started, 1e-9):.0f} MB/s", refresh=False
                )
        if since_commit:
            commit()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise ConvertInterrupted(
            f"interrupted: {report.stored - len(batch)} images are committed in "
            f"{opts.output}; run the same command with --resume to finish"
        ) from None
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(
    writer: Writer, source: SourceList, width: int, fingerprint: str, opts: ConvertOptions, report: ConvertReport
) -> None:
    """The final transaction: index entries and ``__meta__`` in, ``__progress__`` and its log out.

    ``__meta__`` keeps the job's fingerprint (a digest of relative paths, labels, classes and options:
    no times, no absolute paths), so --resume on a complete database checks it is the same job."""
    skipped = {entry["path"] for entry in report.skipped}
    stored = [(rel, label) for rel, label in source.items if rel not in skipped]
    n = len(stored)
    if n == 0:
        raise ConvertError(
            f"no image in {opts.dataset} could be stored ({len(skipped)} files skipped); see --report for the reasons"
        )
    targets = array.array("q", (label for _, label in stored))
    per_class = [0] * len(source.classes)
    for label in targets:
        per_class[label] += 1
    if sys.byteorder == "big":
        targets.byteswap()  # stored little endian
    report.skipped = source.skipped + report.skipped  # directories the scan could not or would not list, too
    meta = {
        "format": schema.FORMAT_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "tool": "lmdb_io",
        "tool_version": __version__,
        "classes": source.classes,
        "class_to_idx": source.class_to_idx,
        "key_width": width,
        "record": {"header_bytes": HEADER_SIZE, "checksum": "xxh3_64", "version": 1},
        "counts": {
            "images": n,
            "per_class": per_class,
            "scanned": report.scanned,
            "stored_original": report.stored_original,
            "stored_reencoded": report.stored_reencoded,
            "stored_transcoded": report.stored_transcoded,
            "skipped": len(report.skipped),
        },
        "payload_bytes": report.bytes_out,
        "options": _options_record(opts),  # max_size, quality: None when not given (reencode.from_meta)
        "fingerprint": fingerprint,
    }
    puts = [
        (schema.KEYS_KEY, b"\n".join(schema.make_key(i, width) for i in range(n))),
        (schema.LEN_KEY, str(n).encode()),
        (schema.TARGETS_KEY, targets.tobytes()),
        (
            schema.PATHS_KEY,
            pathtext.json_bytes([rel for rel, _ in stored]),
        ),
        (schema.META_KEY, json.dumps(meta, sort_keys=True).encode()),
    ]
    with writer.env.begin() as txn:
        progress_keys = [key for key, _ in _progress_log(txn)]
        if txn.get(schema.PROGRESS_KEY) is not None:
            progress_keys.append(schema.PROGRESS_KEY)
    writer.put_all(puts, deletes=tuple(progress_keys))


def check_report_path(path: str) -> None:
    """Refuse a --report path that cannot be written, before converting (not after the database is done)."""
    if os.path.isdir(path):
        raise ConvertError(f"cannot write --report {path}: it is a directory")
    probe = f"{path}.tmp"
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise ConvertError(f"cannot write --report {path}: {exc.strerror}") from None


def write_report(report: ConvertReport, path: str) -> None:
    """Atomically write the JSON report (temp file + rename); paths as ``pathtext`` writes them."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(pathtext.json_dumps(report.to_json(), indent=2))
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise ConvertError(f"cannot write --report {path}: {exc.strerror} (the database is complete)") from None


__all__ = ["ConvertOptions", "ConvertReport", "check_report_path", "convert", "write_report"]
