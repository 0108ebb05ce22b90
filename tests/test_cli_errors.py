"""User mistakes end in one line on stderr and a non-zero exit, never a traceback (command lines run in-process)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lmdb
import pytest
from conftest import assert_one_line_error, convert, copy_tree, lmdb_io_cli
from datagen import GeneratedDataset

from lmdb_dali_train.cli import convert_parser, lmdb_io_parser


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` with its size and modification time: to prove nothing was written there."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_missing_dataset(tmp_path: Path) -> None:
    assert_one_line_error(convert(tmp_path / "nope", tmp_path / "out", check=False), "does not exist")


def test_dataset_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert_one_line_error(convert(tmp_path / "file", tmp_path / "out", check=False), "not a directory")


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(convert(tmp_path / "empty", tmp_path / "out", check=False), "is empty")


def test_dataset_without_classes(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    assert_one_line_error(convert(tmp_path / "flat", tmp_path / "out", check=False), "no class subfolders")


def test_class_folders_without_files(tmp_path: Path) -> None:
    (tmp_path / "data" / "ants").mkdir(parents=True)
    assert_one_line_error(convert(tmp_path / "data", tmp_path / "out", check=False), "no files")


def test_nothing_storable(tmp_path: Path) -> None:
    (tmp_path / "data" / "ants").mkdir(parents=True)
    (tmp_path / "data" / "ants" / "notes.txt").write_text("not an image")
    result = convert(tmp_path / "data", tmp_path / "out", check=False)
    assert_one_line_error(result, "no image", "1 files skipped")


@pytest.mark.parametrize("where", ["subfolder", "class-folder", "itself", "through-a-symlink"])
def test_output_inside_dataset(val_dir: Path, tmp_path: Path, where: str) -> None:
    """Works on a copy: even if the guard regressed, no source dataset would be written to."""
    work = copy_tree(val_dir, tmp_path / "val")
    (tmp_path / "link").symlink_to(work)
    out = {
        "subfolder": work / "db",
        "class-folder": work / "ants" / "db",
        "itself": work,
        "through-a-symlink": tmp_path / "link" / "db",
    }[where]
    before = _snapshot(work)
    assert_one_line_error(convert(work, out, check=False), "inside the dataset")
    assert _snapshot(work) == before


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_output(val_dir: Path, tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "db" if where == "under-a-file" else Path("/proc/lmdb-io-test.lmdb")
    assert_one_line_error(convert(val_dir, out, check=False), "cannot write to output")


def test_output_is_a_file(val_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("mine")
    assert_one_line_error(convert(val_dir, tmp_path / "out", check=False), "not a directory")
    assert (tmp_path / "out").read_text() == "mine"


def test_non_empty_output_is_not_touched(val_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(convert(val_dir, out, check=False), "not empty", "--overwrite")
    assert_one_line_error(convert(val_dir, out, "--overwrite", check=False), "notes.txt")
    assert_one_line_error(convert(val_dir, out, "--resume", check=False), "no LMDB")
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_overwrite_and_resume_exclude_each_other(val_dir: Path, tmp_path: Path) -> None:
    result = convert(val_dir, tmp_path / "out", "--overwrite", "--resume", check=False)
    assert result.returncode == 2 and "not allowed with" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--workers", "--commit-every"])
def test_counts_must_be_positive(val_dir: Path, tmp_path: Path, flag: str) -> None:
    result = convert(val_dir, tmp_path / "out", flag, "0", check=False)
    assert result.returncode == 2 and "at least 1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_existing_empty_output_dir_is_fine_and_overwrite_replaces(
    generated: GeneratedDataset, val_dir: Path, train_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    convert(val_dir, out)
    convert(train_dir, out, "--overwrite")
    info = lmdb_io_cli("info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["images"] == len(generated.train.stored) != len(generated.val.stored)
    assert list(summary["per_class"]) == generated.train.classes


def test_reader_refuses_non_databases(val_dir: Path, tmp_path: Path) -> None:
    assert_one_line_error(lmdb_io_cli("info", str(val_dir)), "no data.mdb")
    assert_one_line_error(lmdb_io_cli("info", str(tmp_path / "missing")), "no such file")
    some_file = next(p for p in (val_dir / "ants").iterdir() if p.is_file())
    assert_one_line_error(lmdb_io_cli("verify", str(some_file)), "not an LMDB")
    foreign = tmp_path / "foreign"
    env = lmdb.open(str(foreign))
    with env.begin(write=True) as txn:
        txn.put(b"0", b"pickled stuff")
        txn.put(b"__len__", b"1")
    env.close()
    assert_one_line_error(lmdb_io_cli("info", str(foreign)), "not written by lmdb_io")
    empty = tmp_path / "empty"
    lmdb.open(str(empty)).close()
    assert_one_line_error(lmdb_io_cli("verify", str(empty)), "empty LMDB")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "data.mdb").write_bytes(b"\0" * 100)
    assert_one_line_error(lmdb_io_cli("info", str(tmp_path / "garbage")), "not a readable LMDB")


def test_converter_refuses_a_foreign_lmdb_on_resume(val_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    env = lmdb.open(str(foreign))
    with env.begin(write=True) as txn:
        txn.put(b"0", b"pickled stuff")
    env.close()
    assert_one_line_error(convert(val_dir, foreign, "--resume", check=False), "did not write")


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(a.option_strings) or a.dest
        for a in _options(parser)
        if not a.help or not a.help.strip() or a.help == argparse.SUPPRESS
    ]


def test_every_option_has_help() -> None:
    """Every flag of convert.py and of ``lmdb-io info|verify`` says what it does in --help."""
    convert = convert_parser()
    assert len(_options(convert)) >= 12  # the parser was really inspected
    assert _undocumented(convert) == []
    top = lmdb_io_parser()
    subparsers = _subparsers(top)
    assert sorted(subparsers) == ["info", "verify"]
    (sub_action,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert all(choice.help and choice.help.strip() for choice in sub_action._choices_actions)  # "info": what it does
    for name, parser in subparsers.items():
        assert _options(parser), name
        assert _undocumented(parser) == [], name


def test_help_check_catches_an_undocumented_flag() -> None:
    """The check above is not vacuous: a flag added without help is reported."""
    parser = convert_parser()
    parser.add_argument("--new-flag", action="store_true")
    assert _undocumented(parser) == ["--new-flag"]
