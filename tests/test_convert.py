"""Converter behaviour on the real hymenoptera set and the bad-images collection."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import all_entries, convert
from PIL import Image
from torchvision.datasets import ImageFolder

from lmdb_io import open_database
from lmdb_io.imagecheck import sniff_format
from lmdb_io.record import ImageFormat


def _raw_loader(path: str) -> str:
    return path


def test_round_trip_matches_imagefolder(hymenoptera: Path, train_db: Path) -> None:
    reference = ImageFolder(str(hymenoptera / "train"), loader=_raw_loader)
    db = open_database(train_db)
    assert db.classes == reference.classes
    assert db.class_to_idx == reference.class_to_idx
    by_path = dict(zip(db.paths(), range(len(db)), strict=True))
    # ImageFolder lists JPEGs by extension only; every one of them is in the database, untouched
    assert len(reference.samples) == 244
    for path, label in reference.samples:
        rel = str(Path(path).relative_to(hymenoptera / "train"))
        payload, stored_label = db.read(by_path[rel])
        assert stored_label == label, rel
        assert bytes(payload) == Path(path).read_bytes(), rel
    assert len(db) == len(reference.samples) + 1  # plus the GIF ImageFolder does not list


def test_gif_is_transcoded_to_rgb_jpeg(hymenoptera: Path, train_db: Path) -> None:
    db = open_database(train_db)
    index = db.paths().index("ants/imageNotFound.gif")
    payload, label, fmt = db.read_record(index)
    assert fmt == ImageFormat.JPEG and sniff_format(bytes(payload)) == ImageFormat.JPEG
    assert label == db.class_to_idx["ants"]
    with Image.open(io.BytesIO(payload)) as stored, Image.open(hymenoptera / "train/ants/imageNotFound.gif") as gif:
        assert stored.mode == "RGB" and stored.size == gif.size
    report = json.loads((train_db.parent / "train-report.json").read_text())
    assert report["stored_transcoded"] == 1 and report["stored_original"] == 244 and report["skipped"] == []
    assert report["transcoded"][0]["path"] == "ants/imageNotFound.gif"


# What happens to each file of bad-images (its MANIFEST.tsv says what each one is).
EXPECTED_BAD = {
    "empty.jpg": "skipped",
    "extraneous-bytes-after-sos.jpg": "original",
    "hopper_gray.jpg": "original",
    "hopper_orientation_6.jpg": "original",
    "invalid-dimensions.jpg": "skipped",
    "junk_jpeg_header.jpg": "transcoded",
    "missing-sof.jpg": "skipped",
    "missing-sos.jpg": "skipped",
    "null_height.jpg": "skipped",
    "pil_sample_cmyk.jpg": "transcoded",
    "png-named-jpg.jpg": "transcoded",
    "progressive3.jpg": "original",
    "truncated_app14.jpg": "transcoded",
    "truncated_jpeg.jpg": "skipped",
}


@pytest.fixture(scope="module")
def bad_db(bad_images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The bad-images files as one class, through --file-list (they sit in one flat folder)."""
    work = tmp_path_factory.mktemp("bad")
    listing = work / "files.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "class"])
        for name in sorted(p.name for p in bad_images.glob("*.jpg")):
            writer.writerow([name, "odd"])
    out, report_path = work / "bad.lmdb", work / "report.json"
    convert(bad_images, out, "--file-list", str(listing), "--report", str(report_path))
    return out, json.loads(report_path.read_text())


def test_bad_images_report_adds_up(bad_images: Path, bad_db: tuple[Path, dict]) -> None:
    out, report = bad_db
    assert report["scanned"] == len(EXPECTED_BAD)
    assert report["scanned"] == report["stored_original"] + report["stored_transcoded"] + len(report["skipped"])
    assert all(entry["reason"] for entry in report["skipped"])
    outcome = {name: "original" for name in EXPECTED_BAD}
    outcome.update({e["path"]: "skipped" for e in report["skipped"]})
    outcome.update({e["path"]: "transcoded" for e in report["transcoded"]})
    assert outcome == EXPECTED_BAD
    assert open_database(out).meta["counts"]["skipped"] == len(report["skipped"])


def test_bad_images_stored_records_decode(bad_images: Path, bad_db: tuple[Path, dict]) -> None:
    db = open_database(bad_db[0])
    for index, rel in enumerate(db.paths()):
        payload, _, fmt = db.read_record(index)
        assert fmt == ImageFormat.JPEG, rel
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            assert image.mode in ("RGB", "L"), rel
        if EXPECTED_BAD[rel] == "original":
            assert bytes(payload) == (bad_images / rel).read_bytes(), rel


def test_keep_format_stores_png_as_is(bad_images: Path, tmp_path: Path) -> None:
    listing = tmp_path / "files.csv"
    listing.write_text("png-named-jpg.jpg,odd\nhopper_gray.jpg,odd\n")
    out = tmp_path / "db"
    convert(bad_images, out, "--file-list", str(listing), "--keep-format")
    db = open_database(out)
    index = db.paths().index("png-named-jpg.jpg")
    payload, _, fmt = db.read_record(index)
    assert fmt == ImageFormat.PNG and bytes(payload) == (bad_images / "png-named-jpg.jpg").read_bytes()


def test_verify_decode_agrees_on_bad_images(bad_images: Path, bad_db: tuple[Path, dict], tmp_path: Path) -> None:
    listing = tmp_path / "files.csv"
    listing.write_text("".join(f"{name},odd\n" for name in EXPECTED_BAD))
    report_path = tmp_path / "r.json"
    convert(bad_images, tmp_path / "db", "--file-list", str(listing), "--verify-decode", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert sorted(e["path"] for e in report["skipped"]) == sorted(e["path"] for e in bad_db[1]["skipped"])


def test_two_conversions_are_equal_entry_for_entry(hymenoptera: Path, train_db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.lmdb"
    convert(hymenoptera / "train", again, "--workers", "1", "--commit-every", "7")
    first, second = all_entries(train_db), all_entries(again)
    assert first.keys() == second.keys()
    assert first == second
    meta = json.loads(first[b"__meta__"])
    assert str(hymenoptera) not in first[b"__meta__"].decode() and "seconds" not in meta


def test_classes_from_keeps_labels_when_a_class_is_missing(hymenoptera: Path, train_db: Path, tmp_path: Path) -> None:
    only_bees = tmp_path / "val"
    (only_bees / "bees").mkdir(parents=True)
    for src in sorted((hymenoptera / "val" / "bees").iterdir())[:5]:
        (only_bees / "bees" / src.name).symlink_to(src)
    out = tmp_path / "val.lmdb"
    convert(only_bees, out, "--classes-from", str(train_db))
    db = open_database(out)
    assert db.classes == ["ants", "bees"]
    assert set(db.targets.tolist()) == {1}
    assert db.meta["counts"]["per_class"] == [0, 5]


def test_classes_from_rejects_unknown_class(hymenoptera: Path, train_db: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "wasps").mkdir(parents=True)
    (data / "wasps" / "a.jpg").symlink_to(
        hymenoptera / "val" / "bees" / sorted(p.name for p in (hymenoptera / "val" / "bees").iterdir())[0]
    )
    proc = convert(data, tmp_path / "out", "--classes-from", str(train_db), check=False)
    assert proc.returncode != 0
    assert "'wasps'" in proc.stderr and "Traceback" not in proc.stderr


def test_file_list_orders_like_imagefolder(hymenoptera: Path, tmp_path: Path) -> None:
    rows = [("val/bees/" + p.name, "bees") for p in sorted((hymenoptera / "val" / "bees").iterdir())[:3]]
    rows += [("val/ants/" + p.name, "ants") for p in sorted((hymenoptera / "val" / "ants").iterdir())[:3]]
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{path},{cls}\n" for path, cls in rows))
    out = tmp_path / "db"
    convert(hymenoptera, out, "--file-list", str(listing))
    db = open_database(out)
    assert db.classes == ["ants", "bees"]
    assert db.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert db.paths() == sorted(r[0] for r in rows if r[1] == "ants") + sorted(r[0] for r in rows if r[1] == "bees")


def test_map_grows_by_itself(hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmdb_io import converter

    monkeypatch.setattr(converter, "INITIAL_MAP_SIZE", 1 << 20)  # 1 MiB for 27 MB of images
    out = tmp_path / "small-map.lmdb"
    report = converter.convert(
        converter.ConvertOptions(dataset=str(hymenoptera / "train"), output=str(out), progress=False)
    )
    assert report.stored == 245
    assert len(open_database(out)) == 245
