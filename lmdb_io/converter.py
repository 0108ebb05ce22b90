"""ImageFolder tree (or file list) -> one LMDB, streaming, resumable, with a report of every file.

The decisions (what goes in, under which key, what a resume may reuse) and the orchestration live here;
reading and checking files is ``prepare``'s job, fast writing ``writer``'s, guarding and locking the
output ``output_dir``'s, the record of what an unfinished run committed ``progress``'s, and the report
``report``'s. Records go out in batched write transactions, each with that record, so ``--resume``
continues from whatever was committed before a crash, a Ctrl-C or a full disk. The index entries are
written in the final transaction: a database without them is incomplete.
"""

from __future__ import annotations

import array
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lmdb
from tqdm import tqdm

from . import __version__, pathtext, schema
from .database import open_database
from .env import close_shared_env
from .errors import ConvertError, ConvertInterrupted
from .imagecheck import Action
from .output_dir import prepare_output
from .prepare import prepare_in_order
from .progress import COUNTS, load_progress, progress_entries, progress_keys
from .record import HEADER_SIZE
from .reencode import Reencode
from .report import ConvertReport, check_report_path, write_report
from .sources import SourceList, read_file_list, scan_image_folder
from .writer import Writer, tune_malloc

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
    lock = prepare_output(opts.output, opts.dataset, resume=opts.resume, overwrite=opts.overwrite)
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
        progress = load_progress(env, out) if opts.resume else None
        if opts.resume and progress is None and env.stat()["entries"]:
            with env.begin() as txn:  # complete already: nothing to redo if it is this job's database
                meta_raw = txn.get(schema.META_KEY)
                assert meta_raw is not None  # load_progress refused entries without __meta__
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
            for name in COUNTS:
                setattr(report, name, counts.get(name, 0))  # a count added since that run was 0 then
            report.reused = report.stored
            start, commits = counts["scanned"], counts["commits"]
        _convert_items(writer, source, start, commits, width, fingerprint, opts, report)
        _finish(writer, source, width, fingerprint, opts, report)
    finally:
        writer.close()
    return report


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
            writer.put_all(batch + progress_entries(report, fingerprint, options, commits, logged))
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
    writer.put_all(puts, deletes=progress_keys(writer.env))


__all__ = ["ConvertOptions", "ConvertReport", "check_report_path", "convert", "write_report"]
