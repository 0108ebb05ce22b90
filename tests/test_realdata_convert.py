"""The real-data tier, converter side: the hymenoptera set (real ImageNet photos) through convert.py and back.

Runs when ``../shared/datasets/hymenoptera`` (or ``$LMDB_TEST_DATASETS/hymenoptera``) exists, and is skipped
with one line otherwise (conftest marks these tests ``realdata``). The fixtures work on a copy.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import all_entries, convert, lmdb_io_cli
from PIL import Image
from torchvision.datasets import ImageFolder

from lmdb_io import open_database
from lmdb_io.imagecheck import sniff_format
from lmdb_io.record import ImageFormat

# What the shared set holds (../shared/datasets/README.md): 244 JPEGs and one GIF in train, 153 JPEGs in val
TRAIN_JPEGS, VAL_JPEGS = 244, 153
GIF = "ants/imageNotFound.gif"


def _raw_loader(path: str) -> str:
    return path


def test_round_trip_matches_imagefolder(hymenoptera: Path, real_train_db: Path) -> None:
    train = hymenoptera / "train"
    reference = ImageFolder(str(train), loader=_raw_loader)
    db = open_database(real_train_db)
    assert db.classes == reference.classes == ["ants", "bees"]
    assert db.class_to_idx == reference.class_to_idx
    by_path = {rel: index for index, rel in enumerate(db.paths())}
    # ImageFolder lists the JPEGs by extension: every one is in the database, untouched, with its label
    assert len(reference.samples) == TRAIN_JPEGS
    for path, label in reference.samples:
        rel = Path(path).relative_to(train).as_posix()
        payload, stored_label, fmt = db.read_record(by_path[rel])
        assert stored_label == label and fmt == ImageFormat.JPEG, rel
        assert bytes(payload) == Path(path).read_bytes(), rel
    assert len(db) == TRAIN_JPEGS + 1  # and the GIF, which ImageFolder does not list, transcoded
    payload, label, fmt = db.read_record(by_path[GIF])
    assert fmt == ImageFormat.JPEG and sniff_format(bytes(payload)) == ImageFormat.JPEG
    assert label == db.class_to_idx["ants"]
    with Image.open(io.BytesIO(payload)) as stored, Image.open(train / GIF) as gif:
        assert stored.mode == "RGB" and stored.size == gif.size
    report = json.loads((real_train_db.parent / "train-report.json").read_text())
    assert report["scanned"] == TRAIN_JPEGS + 1 and report["skipped"] == []
    assert report["stored_original"] == TRAIN_JPEGS and report["stored_transcoded"] == 1
    assert [e["path"] for e in report["transcoded"]] == [GIF]


def test_info_counts(real_train_db: Path, real_val_db: Path) -> None:
    for path, images, transcoded in ((real_train_db, TRAIN_JPEGS + 1, 1), (real_val_db, VAL_JPEGS, 0)):
        result = lmdb_io_cli("info", str(path), "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["images"] == images and summary["stored_transcoded"] == transcoded
        assert summary["classes"] == 2 and summary["skipped_at_conversion"] == 0
        assert sum(summary["per_class"].values()) == images and min(summary["per_class"].values()) > 0
    assert open_database(real_val_db).class_to_idx == open_database(real_train_db).class_to_idx


def test_verify_decode_all_ok(real_train_db: Path, real_val_db: Path) -> None:
    """Every record decodes with Pillow and, where installed, DALI's CPU decoder."""
    for path, images in ((real_train_db, TRAIN_JPEGS + 1), (real_val_db, VAL_JPEGS)):
        result = lmdb_io_cli("verify", str(path), "--decode", "-q")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"all {images} records OK" in result.stdout


def test_two_conversions_are_equal_entry_for_entry(hymenoptera: Path, real_train_db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.lmdb"
    convert(hymenoptera / "train", again, "--workers", "1", "--commit-every", "7")
    first, second = all_entries(real_train_db), all_entries(again)
    assert first.keys() == second.keys()
    assert first == second
