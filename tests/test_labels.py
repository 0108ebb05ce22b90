"""Labels are checked, not trusted: ``__targets__`` is range-checked when a database is opened, each read's
label must agree with ``__targets__``, and ``lmdb-io verify`` reports both.

The crafted databases are copies of the validation database rewritten with py-lmdb: records get valid
checksums (the label sits in the header, outside the checksum), so only the label checks can find them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import assert_one_line_error, lmdb_io_cli

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import CorruptRecordError, ImageFolderLMDB, NotADatabaseError, open_database
from lmdb_io.env import close_shared_env
from lmdb_io.record import decode_record, encode_record
from lmdb_io.schema import TARGETS_KEY

INDEX = 5


def _crafted(val_db: Path, target: Path, record_label: int | None, index_label: int | None) -> tuple[Path, str, int]:
    """A copy of ``val_db`` whose record ``INDEX`` carries ``record_label`` in its header (re-encoded with
    a valid checksum) and whose ``__targets__[INDEX]`` is ``index_label`` (None: left as it is).
    Returns the copy, the record's key and the number of classes."""
    shutil.copytree(val_db, target)
    db = open_database(target)
    key, classes = db.key(INDEX), len(db.classes)
    close_shared_env(str(target))
    env = lmdb.open(str(target), map_size=0)
    with env.begin(write=True) as txn:
        if record_label is not None:
            payload, _, fmt = decode_record(txn.get(key), key)
            txn.put(key, bytes(encode_record(bytes(payload), record_label, fmt)))
        if index_label is not None:
            targets = np.frombuffer(txn.get(TARGETS_KEY), dtype="<i8").copy()
            targets[INDEX] = index_label
            txn.put(TARGETS_KEY, targets.tobytes())
    env.close()
    return target, key.decode(), classes


@pytest.mark.parametrize("bad", [-1, -100, "classes", "classes+5"])
def test_out_of_range_labels_are_refused_at_open(val_db: Path, tmp_path: Path, bad: int | str) -> None:
    """Labels -1, -100 (PyTorch's ignore index: those samples would silently not train) and >= the class
    count, in the record and in ``__targets__`` alike (checksums valid): refused when the database opens."""
    classes = len(open_database(val_db).classes)
    label = {"classes": classes, "classes+5": classes + 5}.get(str(bad), bad)
    assert isinstance(label, int)
    path, key, classes = _crafted(val_db, tmp_path / "labels.lmdb", label, label)
    try:
        with pytest.raises(NotADatabaseError) as raised:
            open_database(path)
        message = str(raised.value)
        assert "\n" not in message
        for fragment in (str(path), "__targets__", key, f"label {label}", f"{classes} classes"):
            assert fragment in message, message
        with pytest.raises(NotADatabaseError):
            ImageFolderLMDB(path)
        assert_one_line_error(lmdb_io_cli("verify", str(path), "-q"), key, f"label {label}", f"{classes} classes")
    finally:
        close_shared_env(str(path))


def test_a_flipped_bit_in_a_record_label_is_an_error_naming_the_key(val_db: Path, tmp_path: Path) -> None:
    """One flipped bit in the header's label field (not covered by the checksum): the read raises instead of
    returning a label that disagrees with ``__targets__``, with or without the checksum check."""
    shutil.copytree(val_db, tmp_path / "flip.lmdb")
    path = tmp_path / "flip.lmdb"
    db = open_database(path)
    key, label, total = db.key(INDEX), int(db.targets[INDEX]), len(db)
    close_shared_env(str(path))
    env = lmdb.open(str(path), map_size=0)
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(key))
        value[8] ^= 0x04  # bit 2 of the label's low byte (the label is the int64 at offset 8 of the header)
        txn.put(key, bytes(value))
    env.close()
    try:
        db = open_database(path)  # __targets__ itself is fine: the database opens
        flipped = label ^ 0x04
        for verify in (True, False):
            with pytest.raises(CorruptRecordError) as raised:
                db.read(INDEX, verify=verify)
            message = str(raised.value)
            assert key.decode() in message and f"label {flipped}" in message and f"({label})" in message, message
        with pytest.raises(CorruptRecordError, match=key.decode()):
            ImageFolderLMDB(path)[INDEX]
        assert db.read(INDEX + 1)[1] == db.targets[INDEX + 1]  # the other records read as before
        result = lmdb_io_cli("verify", str(path), "-q")
        assert result.returncode == ExitCode.BAD_RECORDS, result.stdout + result.stderr
        assert key.decode() in result.stdout and "__targets__" in result.stdout and f"1 of {total}" in result.stdout
    finally:
        close_shared_env(str(path))


def test_a_record_label_out_of_range_disagrees_with_targets(val_db: Path, tmp_path: Path) -> None:
    """A record whose header says 7 while ``__targets__`` holds its true label: the database opens (the
    index is in range), the read of that record fails and verify names it."""
    path, key, _ = _crafted(val_db, tmp_path / "record7.lmdb", 7, None)
    try:
        db = open_database(path)
        with pytest.raises(CorruptRecordError, match=f"{key}.*label 7"):
            db.read(INDEX)
        result = lmdb_io_cli("verify", str(path), "-q")
        assert result.returncode == ExitCode.BAD_RECORDS and key in result.stdout and "label 7" in result.stdout, (
            result.stdout
        )
    finally:
        close_shared_env(str(path))
