"""--file-list: rows that are refused (one line naming the CSV and the row) and rows that are read right."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, convert
from datagen import ORIGINAL, GeneratedDataset

from lmdb_io import open_database


@pytest.fixture
def data(generated: GeneratedDataset, tmp_path: Path) -> Path:
    """A small dataset root of our own: ants/a.jpg, bees/b.jpg, and val/x.jpg beside it (outside it)."""
    jpegs = generated.val.outcome(ORIGINAL)[:2]
    root = tmp_path / "data"
    for name, f in zip(("ants/a.jpg", "bees/b.jpg"), jpegs, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(generated.val.root / f.rel, root / name)
    (tmp_path / "val").mkdir()
    shutil.copy(root / "ants" / "a.jpg", tmp_path / "val" / "x.jpg")
    return root


def _listing(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "files.csv"
    path.write_bytes(text.encode(encoding))
    return path


def _refused(data: Path, tmp_path: Path, text: str, *fragments: str, extra: tuple[str, ...] = ()) -> None:
    listing = _listing(tmp_path, text)
    out = tmp_path / "out"
    result = convert(data, out, "--file-list", str(listing), *extra, check=False)
    assert_one_line_error(result, str(listing), *fragments)
    assert not (out / "data.mdb").exists()


def test_absolute_path_is_refused(data: Path, tmp_path: Path) -> None:
    absolute = data / "ants" / "a.jpg"
    _refused(data, tmp_path, f"ants/a.jpg,ants\n{absolute},ants\n", "row 2", str(absolute), "relative")


def test_parent_path_is_refused(data: Path, tmp_path: Path) -> None:
    _refused(data, tmp_path, "ants/a.jpg,ants\nbees/b.jpg,bees\n../val/x.jpg,ants\n", "row 3", "../val/x.jpg")


def test_row_with_one_column_is_refused(data: Path, tmp_path: Path) -> None:
    _refused(data, tmp_path, "ants/a.jpg,ants\nbees/b.jpg\n", "row 2", "two columns")


def test_unknown_class_with_classes_from_is_refused(data: Path, train_db: Path, tmp_path: Path) -> None:
    """The row is named by its class (the message gives no row number today)."""
    text = "ants/a.jpg,ants\nbees/b.jpg,hornets\n"
    _refused(data, tmp_path, text, "'hornets'", "--classes-from", extra=("--classes-from", str(train_db)))


def test_empty_list_is_refused(data: Path, tmp_path: Path) -> None:
    _refused(data, tmp_path, "path,class\n# nothing yet\n", "lists no files")


def test_missing_list_is_refused(data: Path, tmp_path: Path) -> None:
    result = convert(data, tmp_path / "out", "--file-list", str(tmp_path / "nope.csv"), check=False)
    assert_one_line_error(result, "cannot read --file-list", "nope.csv")


def test_quoted_comma_is_one_path(data: Path, tmp_path: Path) -> None:
    shutil.copy(data / "bees" / "b.jpg", data / "bees" / "a, b.jpg")
    listing = _listing(tmp_path, 'path,class\n"bees/a, b.jpg",bees\nants/a.jpg,ants\n# a comment row\n')
    out = tmp_path / "out"
    convert(data, out, "--file-list", str(listing))
    db = open_database(out)
    assert db.classes == ["ants", "bees"]
    assert db.paths() == ["ants/a.jpg", "bees/a, b.jpg"]
    assert db.targets.tolist() == [0, 1]
    assert bytes(db.read(1)[0]) == (data / "bees" / "a, b.jpg").read_bytes()


def test_classes_from_numbers_file_list_classes(data: Path, train_db: Path, tmp_path: Path) -> None:
    listing = _listing(tmp_path, "bees/b.jpg,bees\nants/a.jpg,ants\n")
    out = tmp_path / "out"
    convert(data, out, "--file-list", str(listing), "--classes-from", str(train_db))
    db = open_database(out)
    train = open_database(train_db)
    assert db.classes == train.classes
    assert db.targets.tolist() == [train.class_to_idx["ants"], train.class_to_idx["bees"]]


def test_bom_before_the_header_row(data: Path, tmp_path: Path) -> None:
    listing = _listing(tmp_path, "path,class\nants/a.jpg,ants\nbees/b.jpg,bees\n", encoding="utf-8-sig")
    assert listing.read_bytes().startswith(b"\xef\xbb\xbf")
    out, report = tmp_path / "out", tmp_path / "report.json"
    convert(data, out, "--file-list", str(listing), "--report", str(report))
    db = open_database(out)
    assert db.classes == ["ants", "bees"]
    assert db.paths() == ["ants/a.jpg", "bees/b.jpg"]
    assert db.meta["counts"]["scanned"] == 2 and db.meta["counts"]["skipped"] == 0


@pytest.mark.parametrize("escape", ["ants/../../val/x.jpg", "./../val/x.jpg"])
def test_path_escaping_the_dataset_is_refused(data: Path, tmp_path: Path, escape: str) -> None:
    assert (data / escape).resolve().is_file()  # the file exists, outside the dataset
    _refused(data, tmp_path, f"ants/a.jpg,ants\n{escape},ants\n", "row 2", escape)


def test_duplicate_path_is_refused(data: Path, tmp_path: Path) -> None:
    """The same file twice (here under two classes, and once spelled with ./) would be stored twice."""
    _refused(data, tmp_path, "ants/a.jpg,ants\nbees/b.jpg,bees\n./ants/a.jpg,bees\n", "row 3", "row 1", "twice")


def test_extra_columns_are_refused(data: Path, tmp_path: Path) -> None:
    _refused(data, tmp_path, "ants/a.jpg,ants\nbees/b.jpg,bees,3\n", "row 2", "3 columns")


def test_empty_class_name_is_refused(data: Path, tmp_path: Path) -> None:
    _refused(data, tmp_path, "ants/a.jpg,ants\nbees/b.jpg, \n", "row 2", "empty class name")


def test_non_utf8_list_is_refused(data: Path, tmp_path: Path) -> None:
    listing = _listing(tmp_path, "ants/a.jpg,ants\nbees/b.jpg,abeilles-\xe9t\xe9\n", encoding="latin-1")
    result = convert(data, tmp_path / "out", "--file-list", str(listing), check=False)
    assert_one_line_error(result, str(listing), "not UTF-8", "line 2")


def test_row_numbers_are_the_files_line_numbers(data: Path, tmp_path: Path) -> None:
    """A header and comment lines are skipped, but errors still name the line an editor shows."""
    _refused(data, tmp_path, "path,class\n# made by hand\n\nants/a.jpg,ants\nbees/b.jpg\n", "row 5", "two columns")
