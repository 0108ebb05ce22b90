"""Converter behaviour on the generated trees (ground truth in datagen) and the vendored bad-images."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import all_entries, assert_one_line_error, convert
from datagen import ORIGINAL, SKIPPED, TRANSCODED, GeneratedDataset
from PIL import Image
from torchvision.datasets import ImageFolder

from lmdb_io import open_database
from lmdb_io.imagecheck import sniff_format
from lmdb_io.record import ImageFormat


def _raw_loader(path: str) -> str:
    return path


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _report(train_db: Path) -> dict:
    return json.loads((train_db.parent / "train-report.json").read_text())


def test_round_trip_matches_imagefolder(generated: GeneratedDataset, train_dir: Path, train_db: Path) -> None:
    reference = ImageFolder(str(train_dir), loader=_raw_loader, allow_empty=True)
    db = open_database(train_db)
    assert db.classes == reference.classes == generated.train.classes
    assert db.class_to_idx == reference.class_to_idx
    assert "cicadas" in db.classes  # the empty class folder is numbered, as ImageFolder numbers it
    assert db.paths() == [f.rel for f in generated.train.stored]  # ImageFolder's order
    by_path = {rel: index for index, rel in enumerate(db.paths())}
    # every file ImageFolder lists (by extension) is in the database with its label; the only exceptions
    # are hidden files (AppleDouble "._x.jpg"), which ImageFolder lists and cannot load
    listed = {str(Path(path).relative_to(train_dir).as_posix()): label for path, label in reference.samples}
    assert {rel for rel in listed if rel not in by_path} == {rel for rel in listed if _hidden(rel)} != set()
    for rel, label in listed.items():
        if not _hidden(rel):
            assert db.read(by_path[rel])[1] == label, rel
    assert {f.rel for f in generated.train.files if f.listed_by_imagefolder} == {r for r in listed if not _hidden(r)}
    for f in generated.train.files:
        source = train_dir / f.rel
        if f.outcome == SKIPPED:
            assert f.rel not in by_path, f.what
            continue
        payload, label, fmt = db.read_record(by_path[f.rel])
        assert label == reference.class_to_idx[f.class_name], f.rel
        assert fmt == ImageFormat.JPEG and sniff_format(bytes(payload)) == ImageFormat.JPEG, f.what
        if f.outcome == ORIGINAL:
            assert bytes(payload) == source.read_bytes(), f.what
        else:
            with Image.open(io.BytesIO(payload)) as stored, Image.open(source) as original:
                assert stored.format == "JPEG" and stored.mode == "RGB", f.what
                assert stored.size == original.size, f.what
                stored.load()


def test_report_adds_up(generated: GeneratedDataset, train_db: Path) -> None:
    split = generated.train
    report = _report(train_db)
    assert report["scanned"] == len(split.files)
    assert report["scanned"] == report["stored_original"] + report["stored_transcoded"] + len(report["skipped"])
    assert report["stored_original"] == len(split.outcome(ORIGINAL))
    assert report["stored_transcoded"] == len(split.outcome(TRANSCODED))
    assert [e["path"] for e in report["transcoded"]] == [f.rel for f in split.outcome(TRANSCODED)]
    assert all(e["reason"] for e in report["transcoded"])
    assert [e["path"] for e in report["skipped"]] == [f.rel for f in split.outcome(SKIPPED)] != []
    assert all("not a known image format" in e["reason"] for e in report["skipped"]), report["skipped"]
    assert report["bytes_in"] == sum((split.root / f.rel).stat().st_size for f in split.files)
    meta = open_database(train_db).meta
    counts = Counter(f.class_name for f in split.stored)
    assert meta["counts"]["per_class"] == [counts[c] for c in split.classes]
    assert meta["counts"]["per_class"][split.classes.index("cicadas")] == 0
    assert meta["counts"]["skipped"] == len(report["skipped"]) and meta["counts"]["images"] == len(split.stored)


def test_hidden_files_are_not_candidates(generated: GeneratedDataset, train_dir: Path, train_db: Path) -> None:
    hidden = [p for p in train_dir.rglob(".*") if p.is_file()]
    assert hidden, "the generated tree should hold hidden files"
    report = _report(train_db)
    mentioned = open_database(train_db).paths() + [e["path"] for e in report["skipped"] + report["transcoded"]]
    assert not [rel for rel in mentioned if _hidden(rel)]
    assert report["scanned"] == len(generated.train.files)


def test_non_ascii_and_nested_names_round_trip(
    generated: GeneratedDataset, train_db: Path, val_db: Path, tmp_path: Path
) -> None:
    for split, path in ((generated.train, train_db), (generated.val, val_db)):
        odd = [f for f in split.stored if not f.rel.isascii() or f.rel.count("/") > 1 or " " in f.rel]
        assert odd, "the generated tree should hold non-ASCII, spaced and nested names"
        copied = tmp_path / path.name
        shutil.copytree(path, copied)  # reopened from scratch: the names come from the database itself
        db = open_database(copied)
        paths = db.paths()
        for f in odd:
            payload, label = db.read(paths.index(f.rel))
            assert label == db.class_to_idx[f.class_name], f.rel
            if f.outcome == ORIGINAL:
                assert bytes(payload) == (split.root / f.rel).read_bytes(), f.rel
    assert any(f.rel.count("/") > 1 for f in generated.train.stored)  # "bees/sub folder/nested.jpg"


def test_classes_from_keeps_labels_when_a_class_is_missing(
    generated: GeneratedDataset, train_db: Path, val_db: Path
) -> None:
    train_classes = open_database(train_db).class_to_idx
    assert set(generated.val.classes) < set(train_classes)  # val has no "cicadas"
    db = open_database(val_db)
    assert db.classes == generated.train.classes and db.class_to_idx == train_classes
    assert db.targets.tolist() == [train_classes[f.class_name] for f in generated.val.stored]
    counts = Counter(f.class_name for f in generated.val.stored)
    assert db.meta["counts"]["per_class"] == [counts[c] for c in db.classes]
    assert db.meta["counts"]["per_class"][db.classes.index("cicadas")] == 0


def test_classes_from_with_one_class_left(generated: GeneratedDataset, train_db: Path, tmp_path: Path) -> None:
    only_bees = tmp_path / "val"
    (only_bees / "bees").mkdir(parents=True)
    bees = [f for f in generated.val.outcome(ORIGINAL) if f.class_name == "bees"][:5]
    for f in bees:
        shutil.copy(generated.val.root / f.rel, only_bees / "bees" / Path(f.rel).name)
    out = tmp_path / "val.lmdb"
    convert(only_bees, out, "--classes-from", str(train_db))
    db = open_database(out)
    assert db.classes == generated.train.classes
    assert set(db.targets.tolist()) == {db.class_to_idx["bees"]}
    assert db.meta["counts"]["per_class"] == [len(bees) if c == "bees" else 0 for c in db.classes]


def test_classes_from_rejects_unknown_class(generated: GeneratedDataset, train_db: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "hornets").mkdir(parents=True)
    shutil.copy(generated.val.root / generated.val.outcome(ORIGINAL)[0].rel, data / "hornets" / "a.jpg")
    result = convert(data, tmp_path / "out", "--classes-from", str(train_db), check=False)
    assert_one_line_error(result, "'hornets'", "--classes-from")
    assert not (tmp_path / "out" / "data.mdb").exists()


def test_file_list_orders_like_imagefolder(generated: GeneratedDataset, tmp_path: Path) -> None:
    bees = [f.rel for f in generated.val.outcome(ORIGINAL) if f.class_name == "bees"][-3:]
    ants = [f.rel for f in generated.val.outcome(ORIGINAL) if f.class_name == "ants"][:3]
    rows = [("val/" + rel, "bees") for rel in reversed(bees)] + [("val/" + rel, "ants") for rel in ants]
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "db"
    convert(generated.root, out, "--file-list", str(listing))
    db = open_database(out)
    assert db.classes == ["ants", "bees"]
    assert db.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert db.paths() == sorted(r[0] for r in rows if r[1] == "ants") + sorted(r[0] for r in rows if r[1] == "bees")
    for index, rel in enumerate(db.paths()):
        assert bytes(db.read(index)[0]) == (generated.root / rel).read_bytes()


def test_two_conversions_are_equal_entry_for_entry(train_dir: Path, train_db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.lmdb"
    convert(train_dir, again, "--workers", "1", "--commit-every", "7")
    first, second = all_entries(train_db), all_entries(again)
    assert first.keys() == second.keys()
    assert first == second
    meta = json.loads(first[b"__meta__"])
    assert str(train_dir) not in first[b"__meta__"].decode() and "seconds" not in meta


def test_verify_decode_stores_the_same_records(
    generated: GeneratedDataset, train_dir: Path, train_db: Path, tmp_path: Path
) -> None:
    out, report_path = tmp_path / "verified.lmdb", tmp_path / "report.json"
    convert(train_dir, out, "--verify-decode", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert [e["path"] for e in report["skipped"]] == [f.rel for f in generated.train.outcome(SKIPPED)]
    plain, verified = all_entries(train_db), all_entries(out)
    assert plain.keys() == verified.keys()
    assert {k: v for k, v in plain.items() if k != b"__meta__"} == {
        k: v for k, v in verified.items() if k != b"__meta__"
    }
    assert json.loads(verified[b"__meta__"])["options"]["verify_decode"] is True


def test_map_grows_by_itself(
    generated: GeneratedDataset, train_dir: Path, train_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmdb_io import converter, writer

    size = sum((train_dir / f.rel).stat().st_size for f in generated.train.files)
    monkeypatch.setattr(writer, "INITIAL_MAP_SIZE", 1 << 18)  # 256 KiB for a few MB of images
    assert size > 8 * writer.INITIAL_MAP_SIZE
    out = tmp_path / "small-map.lmdb"
    report = converter.convert(converter.ConvertOptions(dataset=str(train_dir), output=str(out), progress=False))
    assert report.stored == len(generated.train.stored)
    assert all_entries(out) == all_entries(train_db)


# -- the vendored bad-images collection (its MANIFEST.tsv says what each file is) ---------------------

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


def test_bad_images_outcome_table(bad_images: Path, bad_db: tuple[Path, dict]) -> None:
    out, report = bad_db
    assert sorted(p.name for p in bad_images.glob("*.jpg")) == sorted(EXPECTED_BAD)
    assert report["scanned"] == len(EXPECTED_BAD)
    assert report["scanned"] == report["stored_original"] + report["stored_transcoded"] + len(report["skipped"])
    assert all(entry["reason"] for entry in report["skipped"] + report["transcoded"])
    outcome = {name: "original" for name in EXPECTED_BAD}
    outcome.update({e["path"]: "skipped" for e in report["skipped"]})
    outcome.update({e["path"]: "transcoded" for e in report["transcoded"]})
    assert outcome == EXPECTED_BAD
    assert open_database(out).meta["counts"]["skipped"] == len(report["skipped"])
    assert {e["path"]: e["reason"] for e in report["skipped"]}["empty.jpg"] == "empty file (0 bytes)"


def test_bad_images_stored_records_decode(bad_images: Path, bad_db: tuple[Path, dict]) -> None:
    db = open_database(bad_db[0])
    assert sorted(db.paths()) == sorted(name for name, what in EXPECTED_BAD.items() if what != "skipped")
    for index, rel in enumerate(db.paths()):
        payload, _, fmt = db.read_record(index)
        assert fmt == ImageFormat.JPEG, rel
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            assert image.mode in ("RGB", "L"), rel
        if EXPECTED_BAD[rel] == "original":
            assert bytes(payload) == (bad_images / rel).read_bytes(), rel


def test_keep_format_stores_png_and_cmyk_as_they_are(bad_images: Path, tmp_path: Path) -> None:
    listing = tmp_path / "files.csv"
    listing.write_text("png-named-jpg.jpg,odd\npil_sample_cmyk.jpg,odd\nhopper_gray.jpg,odd\n")
    out = tmp_path / "db"
    convert(bad_images, out, "--file-list", str(listing), "--keep-format")
    db = open_database(out)
    expected = {"png-named-jpg.jpg": ImageFormat.PNG, "pil_sample_cmyk.jpg": ImageFormat.JPEG}
    expected["hopper_gray.jpg"] = ImageFormat.JPEG
    for name, want in expected.items():
        payload, _, fmt = db.read_record(db.paths().index(name))
        assert fmt == want and bytes(payload) == (bad_images / name).read_bytes(), name


def test_verify_decode_agrees_on_bad_images(bad_images: Path, bad_db: tuple[Path, dict], tmp_path: Path) -> None:
    listing = tmp_path / "files.csv"
    listing.write_text("".join(f"{name},odd\n" for name in EXPECTED_BAD))
    report_path = tmp_path / "r.json"
    convert(bad_images, tmp_path / "db", "--file-list", str(listing), "--verify-decode", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert sorted(e["path"] for e in report["skipped"]) == sorted(e["path"] for e in bad_db[1]["skipped"])
    assert sorted(e["path"] for e in report["transcoded"]) == sorted(e["path"] for e in bad_db[1]["transcoded"])


def test_generated_ground_truth_is_varied(generated: GeneratedDataset) -> None:
    """The tests above are only as good as the data: each split has every outcome the converter knows."""
    for split in (generated.train, generated.val):
        assert split.outcome(ORIGINAL) and split.outcome(TRANSCODED)
    assert generated.train.outcome(SKIPPED)
    assert not any(f.class_name == "cicadas" for f in generated.train.files) and "cicadas" in generated.train.classes
