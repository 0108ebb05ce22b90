"""``convert.py --max-size S`` / ``--quality Q``: images stored downscaled and/or re-encoded (reencode.py).

The source tree is drawn here (datagen's photo-like content, in both orientations, larger and smaller
than the cap, grayscale, PNG with and without alpha), so every rule has a file it applies to.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import all_entries, assert_one_line_error, convert, lmdb_io_cli, needs_dali
from datagen import photo
from PIL import Image

from lmdb_dali_train.loaders.torch_loader import make_torch_loader
from lmdb_io import ImageFolderLMDB, open_database
from lmdb_io.reading.spec import ReadSpec
from lmdb_io.reencode import Reencode

CAP = 128
# name: (width, height, Pillow mode, format); each is written into both classes
FILES = {
    "landscape.jpg": (400, 250, "RGB", "JPEG"),
    "portrait.jpg": (150, 333, "RGB", "JPEG"),
    "gray.jpg": (300, 200, "L", "JPEG"),
    "small.jpg": (100, 60, "RGB", "JPEG"),
    "at-cap.jpg": (CAP, 77, "RGB", "JPEG"),
    "alpha.png": (260, 140, "RGBA", "PNG"),
    "small.png": (90, 50, "RGB", "PNG"),
}
CLASSES = ("ants", "bees")
JPEG_OVER_CAP = {n for n, (w, h, _, fmt) in FILES.items() if fmt == "JPEG" and max(w, h) > CAP}
JPEG_WITHIN_CAP = {n for n, (w, h, _, fmt) in FILES.items() if fmt == "JPEG" and max(w, h) <= CAP}
PNGS = {n for n, spec in FILES.items() if spec[3] == "PNG"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reencode") / "tree"
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for seed, (file, (width, height, mode, fmt)) in enumerate(FILES.items()):
            image = photo(width, height, seed + 10 * label, label).convert(mode)
            image.save(root / name / file, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return root


@pytest.fixture(scope="module")
def capped(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """The tree converted with --max-size CAP: (database, JSON report, stdout)."""
    work = tmp_path_factory.mktemp("capped")
    out, report = work / "db", work / "report.json"
    result = convert(tree, out, "--max-size", str(CAP), "--report", str(report))
    return out, json.loads(report.read_text()), result.stdout


def _records(db_path: Path) -> dict[str, tuple[bytes, Image.Image]]:
    """Each stored image by its source path: (payload, the decoded image)."""
    db = open_database(db_path)
    records = {}
    for index, rel in enumerate(db.paths()):
        payload = bytes(db.read(index)[0])
        image = Image.open(io.BytesIO(payload))
        image.load()
        records[rel] = payload, image
    return records


def _quantization(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.quantization)


def _reference_tables(quality: int) -> dict:
    """The JPEG quantization tables Pillow writes at ``quality`` (the quality a JPEG was saved at shows in
    them, whatever the image)."""
    out = io.BytesIO()
    photo(64, 48, 0).save(out, format="JPEG", quality=quality)
    return _quantization(out.getvalue())


def test_target_keeps_the_aspect_ratio() -> None:
    cap = Reencode(max_size=CAP)
    assert cap.target((400, 250)) == (CAP, 80)
    assert cap.target((150, 333)) == (58, CAP)  # 150 * 128 / 333 = 57.66
    assert cap.target((CAP, 77)) == (CAP, 77) and cap.target((100, 60)) == (100, 60)
    assert cap.target((5000, 3)) == (CAP, 1)  # never 0 px
    assert Reencode(quality=90).target((4000, 3000)) == (4000, 3000)


def test_max_size_caps_the_longer_side_and_keeps_small_images_untouched(
    tree: Path, capped: tuple[Path, dict, str]
) -> None:
    out, report, stdout = capped
    records = _records(out)
    assert len(records) == len(FILES) * len(CLASSES)
    for rel, (payload, image) in records.items():
        name = rel.split("/")[1]
        width, height, _, fmt = FILES[name]
        source = (tree / rel).read_bytes()
        assert max(image.size) <= CAP, rel
        if max(width, height) > CAP:
            longer = max(width, height)
            assert max(image.size) == CAP, rel
            assert abs(image.size[0] - width * CAP / longer) <= 1, rel
            assert abs(image.size[1] - height * CAP / longer) <= 1, rel
            assert image.format == "JPEG" and image.mode == "RGB", rel  # the grayscale one too
            assert len(payload) < len(source), rel
        else:
            assert image.size == (width, height), rel
        if name in JPEG_WITHIN_CAP:
            assert payload == source, rel  # its original bytes
        if fmt == "PNG":
            assert image.format == "JPEG", rel  # transcoded, as without --max-size
    per_class = len(CLASSES)
    assert report["stored_reencoded"] == len(JPEG_OVER_CAP) * per_class
    assert report["stored_original"] == len(JPEG_WITHIN_CAP) * per_class
    assert report["stored_transcoded"] == len(PNGS) * per_class
    assert sorted(e["path"].split("/")[1] for e in report["transcoded"]) == sorted(list(PNGS) * per_class)
    assert f"{len(JPEG_OVER_CAP) * per_class} re-encoded" in stdout


def test_quality_reencodes_every_image(tree: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = convert(tree, tmp_path / "db", "--quality", "50", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    jpegs = len(FILES) - len(PNGS)
    assert report["stored_reencoded"] == jpegs * len(CLASSES) and report["stored_original"] == 0
    assert f"{jpegs * len(CLASSES)} re-encoded" in result.stdout
    q50 = _reference_tables(50)
    assert q50 != _reference_tables(95)  # the check below can tell qualities apart
    for rel, (payload, image) in _records(tmp_path / "db").items():
        width, height, _, _ = FILES[rel.split("/")[1]]
        source = (tree / rel).read_bytes()
        assert image.size == (width, height) and image.mode == "RGB", rel  # no --max-size: size kept
        assert payload != source and len(payload) < len(source), rel
        assert _quantization(payload) == q50, rel  # PNGs are transcoded at --quality too


def test_max_size_with_quality(tree: Path, tmp_path: Path) -> None:
    convert(tree, tmp_path / "db", "--max-size", str(CAP), "--quality", "60")
    q60 = _reference_tables(60)
    for rel, (payload, image) in _records(tmp_path / "db").items():
        width, height, _, _ = FILES[rel.split("/")[1]]
        assert max(image.size) == min(CAP, max(width, height)), rel
        assert payload != (tree / rel).read_bytes() and _quantization(payload) == q60, rel


def test_settings_in_meta_database_and_info(tree: Path, capped: tuple[Path, dict, str], tmp_path: Path) -> None:
    out, report, _ = capped
    db = open_database(out)
    assert db.reencode == Reencode(max_size=CAP)
    assert db.meta["options"]["max_size"] == CAP and db.meta["options"]["quality"] is None
    assert db.meta["counts"]["stored_reencoded"] == report["stored_reencoded"]
    summary = json.loads(lmdb_io_cli("info", str(out), "--json").stdout)
    assert (summary["max_size"], summary["quality"]) == (CAP, None)
    assert summary["stored_reencoded"] == report["stored_reencoded"]
    text = lmdb_io_cli("info", str(out)).stdout
    assert f"--max-size {CAP}: images over {CAP} px downscaled" in text
    assert f"{report['stored_reencoded']} re-encoded" in text

    convert(tree, tmp_path / "plain")
    plain = open_database(tmp_path / "plain")
    assert plain.reencode == Reencode() and not plain.reencode.active
    summary = json.loads(lmdb_io_cli("info", str(tmp_path / "plain"), "--json").stdout)
    assert (summary["max_size"], summary["quality"], summary["stored_reencoded"]) == (None, None, 0)
    assert "bytes untouched" in lmdb_io_cli("info", str(tmp_path / "plain")).stdout


def test_resume_refuses_other_settings_and_finishes_with_the_same(
    tree: Path, capped: tuple[Path, dict, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmdb_io import writer

    out = tmp_path / "partial"
    real_put_all = writer.Writer.put_all
    calls = {"n": 0}

    def interrupted_put_all(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_put_all(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(writer.Writer, "put_all", interrupted_put_all)
        stopped = convert(tree, out, "--max-size", str(CAP), "--commit-every", "3", check=False)
    assert stopped.returncode == 130, stopped.stderr
    before = all_entries(out)
    result = convert(tree, out, "--resume", check=False)
    assert_one_line_error(result, "--max-size differs from the interrupted run", f"{CAP} there", "not given now")
    result = convert(tree, out, "--resume", "--max-size", str(CAP), "--quality", "90", check=False)
    assert_one_line_error(result, "--quality differs", "--overwrite")
    assert all_entries(out) == before  # refused before touching anything

    convert(tree, out, "--resume", "--max-size", str(CAP), "--commit-every", "3")
    assert all_entries(out) == all_entries(capped[0])  # the same database as a straight run
    result = convert(tree, out, "--resume", "--max-size", "64", check=False)
    assert_one_line_error(result, "--max-size differs from the complete database there", "(128 there, 64 now)")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--max-size", "8"), "--max-size 8"),
        (("--max-size", "0"), "--max-size 0"),
        (("--max-size", "70000"), "--max-size 70000"),
        (("--quality", "0"), "--quality 0"),
        (("--quality", "101"), "--quality 101"),
        (("--quality", "90", "--keep-format"), "--keep-format cannot go with --quality"),
    ],
)
def test_invalid_settings_are_refused(tree: Path, tmp_path: Path, flags: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(convert(tree, tmp_path / "out", *flags, check=False), fragment)
    assert not (tmp_path / "out").exists()


def test_keep_format_with_max_size_keeps_only_images_within_it(tree: Path, tmp_path: Path) -> None:
    convert(tree, tmp_path / "db", "--max-size", str(CAP), "--keep-format")
    for rel, (payload, image) in _records(tmp_path / "db").items():
        if rel.endswith("small.png"):
            assert image.format == "PNG" and payload == (tree / rel).read_bytes(), rel
        elif rel.endswith("alpha.png"):
            assert image.format == "JPEG" and max(image.size) == CAP and image.mode == "RGB", rel


def test_image_pillow_cannot_decode_is_skipped_with_the_reason(tmp_path: Path) -> None:
    """Structurally sound (stored as it is by default) but its Huffman table is bogus: no re-encode."""
    out = io.BytesIO()
    photo(80, 60, 0).save(out, format="JPEG", quality=90)
    data = bytearray(out.getvalue())
    table = data.find(b"\xff\xc4")
    data[table + 5 : table + 21] = b"\xff" * 16  # code counts summing past 256
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "bogus.jpg").write_bytes(bytes(data))
    (tmp_path / "tree" / "a" / "fine.jpg").write_bytes(out.getvalue())
    convert(tmp_path / "tree", tmp_path / "plain")
    assert len(open_database(tmp_path / "plain")) == 2  # without re-encoding both are stored as they are
    report_path = tmp_path / "report.json"
    convert(tmp_path / "tree", tmp_path / "db", "--max-size", "16", "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert [e["path"] for e in report["skipped"]] == ["a/bogus.jpg"]
    assert report["skipped"][0]["reason"].startswith("cannot re-encode (--max-size 16): ")
    assert report["stored_reencoded"] == 1


# -- loading and training from a re-encoded database ---------------------------------------------------


def test_image_folder_lmdb_trains_on_a_reencoded_database(capped: tuple[Path, dict, str]) -> None:
    from torch.utils.data import DataLoader
    from torchvision import transforms

    dataset = ImageFolderLMDB(
        capped[0], transform=transforms.Compose([transforms.RandomResizedCrop(32), transforms.ToTensor()])
    )
    assert len(dataset) == len(FILES) * len(CLASSES) and dataset.classes == list(CLASSES)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, len(CLASSES)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 0
    for images, labels in DataLoader(dataset, batch_size=4, shuffle=True, num_workers=0):
        assert images.shape[1:] == (3, 32, 32)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        steps += 1
    assert steps == -(-len(dataset) // 4)


@pytest.mark.parametrize("kind", [pytest.param("dali", marks=needs_dali), "torch"])
@pytest.mark.parametrize("train", [True, False])
def test_loaders_read_a_reencoded_database(capped: tuple[Path, dict, str], kind: str, train: bool) -> None:
    db = open_database(capped[0])
    spec = ReadSpec(path=capped[0], batch_size=4, train=train, crop=64, val_resize=72)
    if kind == "torch":
        loader = make_torch_loader(spec, workers=0)
    else:
        from lmdb_dali_train.loaders.dali_loader import make_dali_loader

        loader = make_dali_loader(spec)
    seen = 0
    for batch in loader:
        assert batch.images.shape == (4, 3, 64, 64) and bool(torch.isfinite(batch.images).all())
        real = ~batch.padding
        assert torch.equal(batch.labels[real], torch.tensor(db.targets.tolist())[batch.indices[real]])
        seen += int(real.sum())
    assert seen == (len(db) // 4 * 4 if train else len(db))
