"""The database command lines: ``lmdb-convert`` (``convert.py``) and ``lmdb-io {info,verify}``.

Every user error ends as one line on stderr and a non-zero exit, never a traceback. ``verify --decode``
adds DALI's decoder to the checks when DALI is installed: the CLI injects it, ``lmdb_io`` knows no loader.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from lmdb_io import LmdbIoError, __version__
from lmdb_io.errors import ConvertInterrupted
from lmdb_io.verify import DecodeCheck

from .exit_codes import ExitCode, for_signal
from .progname import prog_name


def _run(prog: str, body: Callable[[], int]) -> int:
    """``body``'s exit code; a user error as one line (``ExitCode.USAGE``). SIGTERM stops the command as
    Ctrl-C does (a KeyboardInterrupt where it runs: the converter keeps what it committed), and either
    exits 128 + the signal's number."""
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return body()
    except ConvertInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return for_signal(received[0] if received else signal.SIGINT)
    except LmdbIoError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return for_signal(received[0] if received else signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- convert ----------------------------------------------------------------------------------------


def convert_parser() -> argparse.ArgumentParser:
    from lmdb_io.converter import ConvertOptions
    from lmdb_io.reencode import MAX_MAX_SIZE, MIN_MAX_SIZE

    default_workers = ConvertOptions.workers
    p = argparse.ArgumentParser(
        prog=prog_name("convert.py"),
        description="Convert an ImageFolder tree (DIR/<class>/<image>) into one LMDB database of raw encoded "
        "images with labels, for ImageFolderLMDB and the DALI loader.",
        epilog="Example: python convert.py --dataset /data/imagenet/train -o /ssd/imagenet-train.lmdb\n"
        "         python convert.py --dataset /data/imagenet/val -o /ssd/imagenet-val.lmdb "
        "--classes-from /ssd/imagenet-train.lmdb",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        required=True,
        metavar="DIR",
        help="dataset root: class subfolders holding images (any depth), or the base of --file-list paths",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="database directory to create (data.mdb inside); may exist if empty",
    )
    p.add_argument(
        "--file-list",
        metavar="CSV",
        help="read 'relative path,class name' rows instead of scanning class folders "
        "(e.g. ImageNet's flat val folder with its labels)",
    )
    p.add_argument(
        "--classes-from",
        metavar="TRAIN_DB",
        help="number classes as in this existing database, so train and val labels agree even when "
        "a class is missing here; a class it does not know is an error",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers,
        metavar="N",
        help=f"threads reading and checking files in parallel (default: {default_workers})",
    )
    p.add_argument(
        "--verify-decode",
        action="store_true",
        help="fully decode every image with Pillow and skip those that fail (slower; default checks "
        "are structural: format sniffing, header parse, JPEG end-of-image marker)",
    )
    p.add_argument(
        "--keep-format",
        action="store_true",
        help="store decodable non-JPEG images (PNG, GIF, CMYK JPEG, ...) as they are instead of "
        "transcoding them to RGB JPEG at quality 95 (with --max-size: while within the size)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        metavar="S",
        help="store images whose longer side is over S px downscaled to S (aspect ratio kept, area averaging), as "
        "RGB JPEG at --quality or 95; smaller ones keep their bytes. Like FFCV's max_resolution: "
        f"smaller images decode faster (default: untouched bytes; S: {MIN_MAX_SIZE} to {MAX_MAX_SIZE})",
    )
    p.add_argument(
        "--quality",
        type=int,
        metavar="Q",
        help="re-encode every image as an RGB JPEG at quality Q (1-100; FFCV's default is 90): fewer bytes to "
        "decode, lossy (default: originals' bytes untouched, transcodes at 95)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing database in OUT")
    group.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted conversion into OUT without redoing committed images",
    )
    p.add_argument(
        "--report",
        metavar="FILE.json",
        help="write counts, bytes, seconds and every skipped or transcoded file with its reason",
    )
    p.add_argument(
        "--commit-every",
        type=int,
        default=1000,
        metavar="N",
        help="images per write transaction (default: 1000; also committed every 16 MB)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def convert_main(argv: Sequence[str] | None = None) -> int:
    from lmdb_io.converter import ConvertOptions, check_report_path, convert, write_report
    from lmdb_io.pathtext import printable

    parser = convert_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.commit_every < 1:
        parser.error("--workers and --commit-every must be at least 1")
    warnings.filterwarnings("ignore", module=r"PIL\..*")  # odd files are reported, not warned about

    def body() -> int:
        opts = ConvertOptions(
            dataset=args.dataset,
            output=args.output,
            file_list=args.file_list,
            classes_from=args.classes_from,
            workers=args.workers,
            verify_decode=args.verify_decode,
            keep_format=args.keep_format,
            overwrite=args.overwrite,
            resume=args.resume,
            commit_every=args.commit_every,
            progress=not args.quiet,
            max_size=args.max_size,
            quality=args.quality,
        )
        if args.report:
            check_report_path(args.report)
        report = convert(opts)
        if args.report:
            write_report(report, args.report)
        print(report.summary())
        for entry in report.skipped[:20]:
            print(f"  skipped {printable(entry['path'])}: {printable(entry['reason'])}")
        if len(report.skipped) > 20:
            print(f"  ... and {len(report.skipped) - 20} more" + (f" (see {args.report})" if args.report else ""))
        return ExitCode.OK

    return _run(parser.prog, body)


# -- info / verify ----------------------------------------------------------------------------------


def _info(path: str, as_json: bool) -> int:
    from lmdb_io import open_database

    db = open_database(path)
    counts = db.meta["counts"]
    reencode = db.reencode
    summary = {
        "path": path,
        "format": db.meta["format"],
        "schema_version": db.meta["schema_version"],
        "images": len(db),
        "classes": len(db.classes),
        "payload_bytes": db.meta["payload_bytes"],
        "file_bytes": db.file_bytes(),
        "stored_original": counts["stored_original"],
        "stored_reencoded": counts.get("stored_reencoded", 0),
        "stored_transcoded": counts["stored_transcoded"],
        "max_size": reencode.max_size,
        "quality": reencode.quality,
        "skipped_at_conversion": counts["skipped"],
        "tool_version": db.meta["tool_version"],
        "per_class": dict(zip(db.classes, counts["per_class"], strict=True)),
    }
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return ExitCode.OK
    print(f"{path}: {db.meta['format']} schema v{db.meta['schema_version']} (lmdb_io {db.meta['tool_version']})")
    print(
        f"  images   {len(db)} ({counts['stored_original']} original, {summary['stored_reencoded']} re-encoded, "
        f"{counts['stored_transcoded']} transcoded; {counts['skipped']} skipped at conversion)"
    )
    print(f"  stored   {reencode.describe()}")
    print(f"  bytes    {db.meta['payload_bytes'] / 1e6:.1f} MB of images, {db.file_bytes() / 1e6:.1f} MB on disk")
    names = db.classes
    shown = ", ".join(f"{c} ({n})" for c, n in list(zip(names, counts["per_class"], strict=True))[:10])
    print(f"  classes  {len(names)}: {shown}{', ...' if len(names) > 10 else ''}")
    return ExitCode.OK


def _dali_decode_check(warnings: list[tuple[int, str]]) -> tuple[str, DecodeCheck] | str:
    """DALI's CPU decoder as a verify check (it decides at training time), or why it is not available;
    what the decoder prints while a record decodes (libjpeg's "Corrupt JPEG data") goes to ``warnings``."""
    try:
        import nvidia.dali

        from dali_pipeline.decode_check import undecodable_records
    except ImportError:
        return "DALI not installed: its decoder was not tried"

    def check(db: Any, indices: Sequence[int], threads: int) -> list[tuple[int, str]]:
        return undecodable_records(db, indices, threads, on_warning=lambda i, text: warnings.append((i, text)))

    return f"DALI {nvidia.dali.__version__} (CPU)", check


def _verify(path: str, decode: bool, workers: int, quiet: bool) -> int:
    from lmdb_io import open_database
    from lmdb_io.pathtext import printable
    from lmdb_io.verify import verify_database

    db = open_database(path)
    warnings: list[tuple[int, str]] = []
    dali = _dali_decode_check(warnings) if decode else None
    result = verify_database(
        db, decode=decode, workers=workers, progress=not quiet, decode_checks=[dali] if isinstance(dali, tuple) else []
    )
    checked = result.checked + (f" ({dali})" if isinstance(dali, str) else "")
    paths = db.paths() if result.problems or warnings else []
    for index, text in warnings:  # decoded, with part of the image lost: worth a look, not a failure
        key = db.key(index).decode()
        print(f"  warning: record {key} decodes with DALI's CPU decoder saying: {text} [{printable(paths[index])}]")
    if result.problems:
        for index, problem in result.problems:
            print(f"  {problem} [{printable(paths[index])}]")
        print(f"{path}: {result.bad_records} of {len(db)} records failed ({checked})")
        return ExitCode.BAD_RECORDS
    print(f"{path}: all {len(db)} records OK ({checked})" + (f", {len(warnings)} with warnings" if warnings else ""))
    return ExitCode.OK


def lmdb_io_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog_name("lmdb-io"), description="Inspect and check lmdb_io image databases.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser(
        "info", help="image count, classes, bytes, schema version and --max-size / --quality of a database"
    )
    info.add_argument("db", metavar="DB", help="database directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    verify = sub.add_parser("verify", help="check every record's header, checksum and label")
    verify.add_argument("db", metavar="DB", help="database directory")
    verify.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image with Pillow and, when installed, DALI's CPU decoder",
    )
    verify.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="threads checking records (default: all cores)",
    )
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def lmdb_io_main(argv: Sequence[str] | None = None) -> int:
    parser = lmdb_io_parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    if args.command == "info":
        return _run(prog, lambda: _info(args.db, args.json))
    return _run(prog, lambda: _verify(args.db, args.decode, args.workers, args.quiet))
