"""Databases and odd inputs (issue 10, section 5): a truncated data.mdb, two converters on one output,
--resume on another dataset's database, symlink loops and unreadable folders, non-UTF-8 file names,
an unwritable report, and files too large to read whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, convert, lmdb_io_cli

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
