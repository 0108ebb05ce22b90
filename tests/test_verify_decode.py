"""``lmdb-io verify --decode`` on records too large to decode: each is reported (key and reason) from its
header alone, never handed to Pillow or DALI, and DALI decodes the rest in batches bounded in pixels.

The crafted databases are copies of the validation database whose records 2 and 9 are replaced (valid
checksums, true labels) by a 20000 x 20000 PNG of a few dozen KB that decodes to 1.2 GB of RGB.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from conftest import lmdb_io_cli, needs_dali
from datagen import huge_png
from PIL import Image

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import ImageFormat, open_database
from lmdb_io.env import close_shared_env
from lmdb_io.imagecheck import image_size
from lmdb_io.record import encode_record
from lmdb_io.verify import verify_database

BOMBS = (2, 9)
HUGE = huge_png()


@pytest.fixture
def bomb_db(val_db: Path, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A copy of ``val_db`` whose records BOMBS hold HUGE; returns it and those records' keys."""
    path = tmp_path / "bomb.lmdb"
    shutil.copytree(val_db, path)
    db = open_database(path)
    keys = [db.key(i) for i in BOMBS]
    labels = [int(db.targets[i]) for i in BOMBS]
    close_shared_env(str(path))
    env = lmdb.open(str(path), map_size=0)
    with env.begin(write=True) as txn:
        for key, label in zip(keys, labels, strict=True):
            txn.put(key, bytes(encode_record(HUGE, label, ImageFormat.PNG)))
    env.close()
    yield path, [k.decode() for k in keys]
    close_shared_env(str(path))


@pytest.fixture
def pillow_never_decodes_a_bomb(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records each time verify's Pillow decode is asked to decode HUGE (and fails the decode)."""
    from lmdb_io import dataset

    real = dataset.decode_rgb
    asked: list[int] = []

    def guarded(payload: memoryview) -> Image.Image:
        if bytes(payload[:64]) == HUGE[:64]:
            asked.append(len(payload))
            raise AssertionError("an over-cap record was decoded")
        return real(payload)

    monkeypatch.setattr(dataset, "decode_rgb", guarded)
    return asked


@pytest.fixture
def dali_never_gets_a_bomb(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Every batch of indices sent to the DALI child; sending an index of BOMBS fails the test at once."""
    from dali_pipeline import decode_check

    real = decode_check._Worker.check
    batches: list[list[int]] = []

    def guarded(self: decode_check._Worker, indices: list[int]) -> decode_check.Answer:
        batches.append(list(indices))
        assert not set(indices) & set(BOMBS), f"over-cap records {set(indices) & set(BOMBS)} sent to DALI"
        return real(self, indices)

    monkeypatch.setattr(decode_check._Worker, "check", guarded)
    return batches


def test_pillow_check_reports_over_cap_records_without_decoding(
    bomb_db: tuple[Path, list[str]], pillow_never_decodes_a_bomb: list[int]
) -> None:
    path, keys = bomb_db
    result = verify_database(open_database(path), decode=True, workers=2, progress=False)
    assert pillow_never_decodes_a_bomb == []
    assert [i for i, _ in result.problems] == list(BOMBS), result.problems  # every one, not the first only
    for (_, reason), key in zip(result.problems, keys, strict=True):
        assert key in reason and "too large" in reason and "20000x20000" in reason, reason


@needs_dali
def test_dali_check_reports_over_cap_records_without_feeding_them(
    bomb_db: tuple[Path, list[str]], dali_never_gets_a_bomb: list[list[int]]
) -> None:
    from dali_pipeline.decode_check import undecodable_records

    path, keys = bomb_db
    db = open_database(path)
    bad = undecodable_records(db, range(len(db)), batch_size=8)
    assert [i for i, _ in bad] == list(BOMBS), bad
    for (_, reason), key in zip(bad, keys, strict=True):
        assert key in reason and "too large" in reason and "20000x20000" in reason, reason
    fed = sorted(i for batch in dali_never_gets_a_bomb for i in batch)
    assert fed == [i for i in range(len(db)) if i not in BOMBS]  # the others were all decoded


@needs_dali
def test_verify_decode_cli_lists_every_over_cap_record(
    bomb_db: tuple[Path, list[str]], pillow_never_decodes_a_bomb: list[int], dali_never_gets_a_bomb: list[list[int]]
) -> None:
    path, keys = bomb_db
    n = len(open_database(path))
    result = lmdb_io_cli("verify", str(path), "--decode", "-q", "--workers", "2")
    assert result.returncode == ExitCode.BAD_RECORDS, result.stdout + result.stderr
    assert f"{len(BOMBS)} of {n} records failed" in result.stdout, result.stdout
    for key in keys:
        lines = [line for line in result.stdout.splitlines() if key in line]
        assert len(lines) == 1 and "too large" in lines[0], result.stdout  # Pillow's and DALI's finding, once
    assert pillow_never_decodes_a_bomb == []


@needs_dali
def test_dali_check_batches_are_bounded_in_pixels(val_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a pixel budget a quarter of the database's pixels, the records go to DALI in several batches,
    each within the budget (a record larger than the budget alone), although they fit one batch by count."""
    from dali_pipeline import decode_check

    db = open_database(val_db)
    pixels = []
    for i in range(len(db)):
        size = image_size(db.read(i)[0])
        assert size is not None
        pixels.append(size[0] * size[1])
    budget = max(max(pixels), sum(pixels) // 4)
    monkeypatch.setattr(decode_check, "BATCH_PIXELS", budget, raising=False)
    real = decode_check._Worker.check
    batches: list[list[int]] = []

    def recorded(self: decode_check._Worker, indices: list[int]) -> decode_check.Answer:
        batches.append(list(indices))
        return real(self, indices)

    monkeypatch.setattr(decode_check._Worker, "check", recorded)
    assert decode_check.undecodable_records(db, range(len(db)), batch_size=len(db)) == []
    assert sorted(i for batch in batches for i in batch) == list(range(len(db)))
    assert len(batches) > 1
    for batch in batches:
        assert len(batch) == 1 or sum(pixels[i] for i in batch) <= budget, (batch, budget)


@needs_dali
def test_a_decoder_warning_names_its_record(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A JPEG whose scan ends early (an end-of-image marker after part of its data) decodes, part of it
    grey: libjpeg says "Corrupt JPEG data: premature end of data segment" on stderr. verify names the
    record and its path in a warning line; it is no failure, and nothing reaches stderr unattributed."""
    import io

    import numpy as np
    from conftest import convert

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=90)
    whole = encoded.getvalue()
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "good.jpg").write_bytes(whole)
    (tmp_path / "tree" / "a" / "short.jpg").write_bytes(whole[: whole.find(b"\xff\xda") + 200] + b"\xff\xd9")
    convert(tmp_path / "tree", tmp_path / "db")
    capfd.readouterr()
    result = lmdb_io_cli("verify", str(tmp_path / "db"), "--decode", "-q")
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    short = open_database(tmp_path / "db").paths().index("a/short.jpg")
    key = open_database(tmp_path / "db").key(short).decode()
    (warning,) = [line for line in result.stdout.splitlines() if line.strip().startswith("warning:")]
    assert f"record {key}" in warning and "premature end of data segment" in warning and "[a/short.jpg]" in warning
    assert "1 with warnings" in result.stdout
    assert "Corrupt JPEG" not in capfd.readouterr().err
