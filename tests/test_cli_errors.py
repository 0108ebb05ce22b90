"""User mistakes end in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
from conftest import convert, run_cli


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_dataset(tmp_path: Path) -> None:
    assert_one_line_error(convert(tmp_path / "nope", tmp_path / "out", check=False), "does not exist")


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(convert(tmp_path / "empty", tmp_path / "out", check=False), "is empty")


def test_dataset_without_classes(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    assert_one_line_error(convert(tmp_path / "flat", tmp_path / "out", check=False), "no class subfolders")


def test_output_inside_dataset(hymenoptera: Path) -> None:
    proc = convert(hymenoptera / "val", hymenoptera / "val" / "db", check=False)
    assert_one_line_error(proc, "inside the dataset")
    assert not (hymenoptera / "val" / "db").exists()


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_output(hymenoptera: Path, tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "db" if where == "under-a-file" else Path("/proc/lmdb-io-test.lmdb")
    assert_one_line_error(convert(hymenoptera / "val", out, check=False), "cannot write to output")


def test_non_empty_output_is_not_touched(hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(convert(hymenoptera / "val", out, check=False), "not empty", "--overwrite")
    assert_one_line_error(convert(hymenoptera / "val", out, "--overwrite", check=False), "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def test_existing_empty_output_dir_is_fine_and_overwrite_replaces(hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    convert(hymenoptera / "val", out)
    convert(hymenoptera / "train", out, "--overwrite")
    info = run_cli("-m", "lmdb_io", "info", str(out), check=True)
    assert "245" in info.stdout


def test_reader_refuses_non_databases(hymenoptera: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("-m", "lmdb_io", "info", str(hymenoptera / "val")), "no data.mdb")
    assert_one_line_error(run_cli("-m", "lmdb_io", "info", str(tmp_path / "missing")), "no such file")
    some_file = next((hymenoptera / "val" / "ants").iterdir())
    assert_one_line_error(run_cli("-m", "lmdb_io", "verify", str(some_file)), "not an LMDB")
    foreign = tmp_path / "foreign"
    env = lmdb.open(str(foreign))
    with env.begin(write=True) as txn:
        txn.put(b"0", b"pickled stuff")
        txn.put(b"__len__", b"1")
    env.close()
    assert_one_line_error(run_cli("-m", "lmdb_io", "info", str(foreign)), "not written by lmdb_io")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "data.mdb").write_bytes(b"\0" * 100)
    assert_one_line_error(run_cli("-m", "lmdb_io", "info", str(tmp_path / "garbage")), "not a readable LMDB")


def test_help_explains_every_flag() -> None:
    out = run_cli("convert.py", "--help", check=True).stdout
    for flag in (
        "--dataset",
        "--output",
        "--file-list",
        "--classes-from",
        "--workers",
        "--verify-decode",
        "--keep-format",
        "--overwrite",
        "--resume",
        "--report",
        "--commit-every",
        "--quiet",
    ):
        assert flag in out
