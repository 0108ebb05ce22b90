"""Databases and odd inputs (issue 10, section 5): a truncated data.mdb, two converters on one output,
--resume on another dataset's database, symlink loops and unreadable folders, non-UTF-8 file names,
an unwritable report, and files too large to read whole."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import all_entries, assert_one_line_error, convert, lmdb_io_cli
from datagen import ORIGINAL, GeneratedDataset

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import NotADatabaseError, open_database
from lmdb_io.env import close_shared_env

# -- a truncated data.mdb ---------------------------------------------------------------------------


@pytest.fixture
def truncated_db(val_dir: Path, tmp_path: Path) -> tuple[Path, int, int]:
    """A converted database whose data.mdb lost its second half: (path, bytes left, bytes expected)."""
    out = tmp_path / "db"
    convert(val_dir, out)
    close_shared_env(str(out))
    data = out / "data.mdb"
    full = data.stat().st_size
    os.truncate(data, full // 2)
    return out, full // 2, full


def test_truncated_database_is_refused_by_info_and_verify(truncated_db: tuple[Path, int, int]) -> None:
    """Not a Bus error (exit 135): one line naming data.mdb and both sizes."""
    out, left, full = truncated_db
    for command in ("info", "verify"):
        result = lmdb_io_cli(command, str(out), *(["-q"] if command == "verify" else []))
        assert_one_line_error(result, str(out), "data.mdb is truncated", f"({left} of {full} bytes)")


def test_truncated_database_is_refused_at_open(truncated_db: tuple[Path, int, int]) -> None:
    out, left, full = truncated_db
    with pytest.raises(NotADatabaseError, match=f"data.mdb is truncated \\({left} of {full} bytes\\)"):
        open_database(out)


# -- two converters on one output -------------------------------------------------------------------


def test_second_converter_on_the_same_output_is_refused(
    train_dir: Path, train_db: Path, val_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion paused before its first commit holds OUT: a second one (--overwrite) refuses in one line,
    and the first then finishes a database of its own dataset only."""
    from lmdb_io import converter
    from lmdb_io.writer import Writer

    out = tmp_path / "db"
    paused, release = threading.Event(), threading.Event()
    original_put_all = Writer.put_all

    def put_all(self: Writer, puts: list[tuple[bytes, Any]], deletes: tuple[bytes, ...] = ()) -> None:
        if threading.current_thread().name == "first-converter":
            paused.set()
            release.wait(60)
        original_put_all(self, puts, deletes)

    monkeypatch.setattr(Writer, "put_all", put_all)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            converter.convert(converter.ConvertOptions(dataset=str(train_dir), output=str(out), progress=False))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first, name="first-converter")
    thread.start()
    try:
        assert paused.wait(60), "the first conversion never reached its first commit"
        second = convert(val_dir, out, "--overwrite", check=False)
    finally:
        release.set()
        thread.join(120)
    assert_one_line_error(second, str(out), "another conversion")
    assert not errors, errors
    assert all_entries(out) == all_entries(train_db)  # the first conversion's dataset, nothing else


def test_lock_file_left_by_a_killed_converter_bothers_nobody(val_dir: Path, train_dir: Path, tmp_path: Path) -> None:
    """kill -9 leaves OUT/.convert.lock behind, unlocked: readers, --overwrite and a fresh run ignore it."""
    from lmdb_io.output_dir import LOCK_FILE

    out = tmp_path / "db"
    out.mkdir()
    (out / LOCK_FILE).write_text("999999\n")
    convert(val_dir, out)  # an output holding only a stale lock file counts as empty
    assert sorted(os.listdir(out)) == ["data.mdb", "lock.mdb"]  # the lock file is gone with the lock
    (out / LOCK_FILE).write_text("999999\n")
    assert lmdb_io_cli("verify", str(out), "-q").returncode == 0
    close_shared_env(str(out))
    convert(train_dir, out, "--overwrite")
    assert sorted(os.listdir(out)) == ["data.mdb", "lock.mdb"]


# -- --resume on a complete database of another dataset --------------------------------------------


def test_resume_of_a_complete_database_refuses_another_dataset(train_dir: Path, val_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "db"
    convert(val_dir, out)
    before = all_entries(out)
    assert_one_line_error(convert(train_dir, out, "--resume", check=False), str(out), "differ", "--overwrite")
    assert_one_line_error(convert(val_dir, out, "--resume", "--keep-format", check=False), "differ")
    assert all_entries(out) == before
    assert "reused" in convert(val_dir, out, "--resume").stdout  # the same dataset: nothing to redo
    assert all_entries(out) == before


# -- directory symlink loops and unreadable folders -------------------------------------------------


@pytest.fixture
def small_tree(generated: GeneratedDataset, tmp_path: Path) -> Path:
    """data/ants/a.jpg and data/bees/b.jpg."""
    root = tmp_path / "data"
    for name, f in zip(("ants/a.jpg", "bees/b.jpg"), generated.val.outcome(ORIGINAL)[:2], strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(generated.val.root / f.rel, root / name)
    return root


def _convert_with_report(root: Path, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    out, report = tmp_path / "out", tmp_path / "report.json"
    convert(root, out, "--report", str(report), *extra)
    return out, json.loads(report.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("link", "target"),
    [("bees/up", ".."), ("ants/more-bees", "../bees")],
    ids=["loop-to-the-root", "class-folder-again"],
)
def test_directory_seen_twice_is_visited_once_and_reported(
    small_tree: Path, tmp_path: Path, link: str, target: str
) -> None:
    """bees/up -> .. loops (bees/up/bees/up/...); ants/more-bees -> ../bees would label bees' images ants."""
    (small_tree / link).symlink_to(target)
    out, report = _convert_with_report(small_tree, tmp_path)
    db = open_database(out)
    assert db.paths() == ["ants/a.jpg", "bees/b.jpg"]
    assert db.targets.tolist() == [0, 1]
    assert [e["path"] for e in report["skipped"]] == [link], report["skipped"]
    assert "already visited" in report["skipped"][0]["reason"]


def test_unreadable_class_folder_is_reported(small_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated (tests may run as root, where chmod 000 denies nothing): listing bees/ fails."""
    real_scandir = os.scandir
    denied = small_tree / "bees"

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) == str(denied):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out, report = _convert_with_report(small_tree, tmp_path)
    assert open_database(out).paths() == ["ants/a.jpg"]
    assert [(e["path"], "Permission denied" in e["reason"]) for e in report["skipped"]] == [("bees", True)]


def test_skipped_directory_is_counted_once_in_the_database(small_tree: Path, tmp_path: Path) -> None:
    """A directory the scan skips (here a loop) counts in __meta__'s skipped, so ``lmdb-io info`` shows what
    convert printed and reported; a --resume of the complete database reports the same count again."""
    (small_tree / "bees" / "up").symlink_to("..")
    (small_tree / "bees" / "notes.txt").write_text("not an image")  # a skipped file besides the directory
    out, report = _convert_with_report(small_tree, tmp_path)
    assert sorted(e["path"] for e in report["skipped"]) == ["bees/notes.txt", "bees/up"], report["skipped"]
    info = json.loads(lmdb_io_cli("info", str(out), "--json").stdout)
    assert info["skipped_at_conversion"] == 2
    _, again = _convert_with_report(small_tree, tmp_path, "--resume")
    assert len(again["skipped"]) == 2, again["skipped"]
    assert "bees/up" in [e["path"] for e in again["skipped"]]


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not deny root (simulated above)")
def test_unreadable_class_folder_is_reported_chmod(small_tree: Path, tmp_path: Path) -> None:
    (small_tree / "bees").chmod(0)
    try:
        out, report = _convert_with_report(small_tree, tmp_path)
    finally:
        (small_tree / "bees").chmod(0o755)
    assert open_database(out).paths() == ["ants/a.jpg"]
    assert [e["path"] for e in report["skipped"]] == ["bees"]


# -- file names that are not UTF-8, and the report ------------------------------------------------


def test_non_utf8_file_names_round_trip(small_tree: Path, tmp_path: Path) -> None:
    """Linux names are bytes: b"caf\\xe9.jpg" (Latin-1) must reach __paths__, the report, samples and
    verify's messages unchanged, and the report must be written (no .tmp left behind)."""
    from lmdb_io import ImageFolderLMDB

    bees = os.fsencode(small_tree / "bees")
    image_name, other_name = b"caf\xe9.jpg", b"notes-\xff.txt"
    shutil.copy(small_tree / "bees" / "b.jpg", bees + b"/" + image_name)
    with open(bees + b"/" + other_name, "wb") as f:
        f.write(b"not an image")
    out, report = tmp_path / "out", tmp_path / "report.json"
    result = convert(small_tree, out, "--report", str(report))
    assert "notes-\\xff.txt" in result.stdout  # printable, whatever the terminal's encoding
    assert sorted(os.listdir(tmp_path)) == ["data", "out", "report.json"]
    skipped = json.loads(report.read_bytes())["skipped"]
    assert [os.fsencode(entry["path"]) for entry in skipped] == [b"bees/" + other_name]
    db = open_database(out)
    paths = [os.fsencode(p) for p in db.paths()]
    assert paths == [b"ants/a.jpg", b"bees/b.jpg", b"bees/" + image_name]
    index = paths.index(b"bees/" + image_name)
    assert bytes(db.read(index)[0]) == (small_tree / "bees" / "b.jpg").read_bytes()
    samples = ImageFolderLMDB(out).samples
    assert [(os.fsencode(p), label) for p, label in samples] == [(p, t) for p, t in zip(paths, [0, 1, 1], strict=True)]
    key = db.key(index)
    del db, samples
    close_shared_env(str(out))
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        record = bytearray(txn.get(key))
        record[-1] ^= 0xFF
        txn.put(key, bytes(record))
    env.close()
    verify = lmdb_io_cli("verify", str(out), "-q")
    assert verify.returncode == ExitCode.BAD_RECORDS, (verify.stdout, verify.stderr)
    assert "bees/caf\\xe9.jpg" in verify.stdout


@pytest.mark.parametrize("where", ["missing-folder", "a-directory"])
def test_unwritable_report_is_refused_before_converting(val_dir: Path, tmp_path: Path, where: str) -> None:
    (tmp_path / "a-directory").mkdir()
    report = tmp_path / "missing" / "report.json" if where == "missing-folder" else tmp_path / "a-directory"
    out = tmp_path / "out"
    assert_one_line_error(convert(val_dir, out, "--report", str(report), check=False), "--report", str(report))
    assert not out.exists()


# -- files too large to read whole, and short reads -------------------------------------------------


class _RecordedFile:
    """A file opened by lmdb_io.prepare, recording each read's requested size: a request over ``refuse``
    bytes fails (so no test ever reads gigabytes) and each read returns at most ``chunk`` bytes (short
    reads, as from a network file system)."""

    def __init__(self, f: Any, requests: list[int], refuse: int, chunk: int) -> None:
        self._f, self._requests, self._refuse, self._chunk = f, requests, refuse, chunk

    def _ask(self, n: int) -> int:
        self._requests.append(n)
        if n > self._refuse:
            raise OSError(errno.EIO, f"test: a read of {n} bytes")
        return min(n, self._chunk)

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        return self._f.readinto(view[: self._ask(len(view))])

    def read(self, n: int = -1) -> bytes:
        return self._f.read(self._ask(n if n is not None and n >= 0 else 1 << 62))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _RecordedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _record_reads(monkeypatch: pytest.MonkeyPatch, refuse: int, chunk: int) -> dict[str, list[int]]:
    from lmdb_io import prepare

    requests: dict[str, list[int]] = {}

    def recorded_open(path: Any, *args: Any, **kwargs: Any) -> _RecordedFile:
        f = open(path, *args, **kwargs)  # closed by _RecordedFile.__exit__
        return _RecordedFile(f, requests.setdefault(os.path.basename(os.fspath(path)), []), refuse, chunk)

    monkeypatch.setattr(prepare, "open", recorded_open, raising=False)
    return requests


def test_huge_files_are_skipped_without_reading_them_whole(
    small_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 GiB sparse files: one that is no image (zeros) and one whose first bytes say JPEG."""
    huge = 3 << 30
    with open(small_tree / "bees" / "huge.bin", "wb") as f:
        f.truncate(huge)
    with open(small_tree / "bees" / "huge.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        f.truncate(huge)
    requests = _record_reads(monkeypatch, refuse=1 << 20, chunk=1 << 62)
    out, report = _convert_with_report(small_tree, tmp_path)
    assert open_database(out).paths() == ["ants/a.jpg", "bees/b.jpg"]
    reasons = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert "not a known image format" in reasons.pop("bees/huge.bin")
    assert "larger than the 2 GiB cap" in reasons.pop("bees/huge.jpg")
    assert not reasons
    for name in ("huge.bin", "huge.jpg"):
        assert sum(requests[name]) <= 1 << 20, (name, requests[name])
    assert report["bytes_in"] == 2 * huge + sum(
        p.stat().st_size for p in small_tree.rglob("*.jpg") if p.stat().st_size < huge
    )


def test_short_reads_are_continued_to_the_end_of_the_file(
    small_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _record_reads(monkeypatch, refuse=1 << 40, chunk=1000)
    out, report = _convert_with_report(small_tree, tmp_path)
    assert len(requests["a.jpg"]) > 2  # read in pieces
    db = open_database(out)
    assert report["skipped"] == [] and report["transcoded"] == []
    for index, rel in enumerate(db.paths()):
        assert bytes(db.read(index)[0]) == (small_tree / rel).read_bytes(), rel
