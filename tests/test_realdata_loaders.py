"""The real-data tier of the loader and trainer tests: the hymenoptera photos (conftest's ``hymenoptera``,
``real_train_db``; marked ``realdata`` and skipped, one line why, when the set is missing).

Real camera JPEGs are what the generated data imitates: the loaders' validation parity, the DALI
validation geometry and a two-process training epoch are checked on them too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import convert
from test_loaders import (
    MAX_MEAN_ABS_DIFF,
    PARITY_BAD_IMAGES,
    assert_train_parity,
    needs_dali,
    parity_tree,
    train_differences,
    worst_val_difference,
)
from test_train import _assert_sharding, _epoch_args, _key_logs, _ok, _torchrun, whole_epoch_batch

from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan


def _real_val_files(hymenoptera: Path) -> list[Path]:
    return sorted(p for p in (hymenoptera / "val").glob("*/*") if p.is_file())


@pytest.fixture(scope="module")
def real_parity_db(hymenoptera: Path, bad_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hymenoptera validation photos plus the EXIF-rotated, grayscale and CMYK bad-images."""
    root = tmp_path_factory.mktemp("real-parity")
    out = root / "parity.lmdb"
    convert(parity_tree(hymenoptera / "val", bad_images, root / "val"), out)
    return out


@needs_dali
def test_real_val_parity_between_dali_cpu_and_torchvision(real_parity_db: Path, hymenoptera: Path) -> None:
    worst, key, count = worst_val_difference(real_parity_db)
    assert count == len(open_database(real_parity_db)) == len(_real_val_files(hymenoptera)) + len(PARITY_BAD_IMAGES)
    assert worst <= MAX_MEAN_ABS_DIFF, f"worst per-image mean abs difference {worst:.2f} / 255 (record {key})"


@needs_dali
def test_real_train_parity_between_dali_cpu_and_torchvision(real_train_db: Path) -> None:
    """Camera photos at the production crop: the same crop and flip in both loaders, the images within
    3/255 for at least 95% of the samples (``test_loaders.TRAIN_WITHIN_SHARE``)."""
    found = train_differences(real_train_db, seed=7)
    assert len(found) == len(open_database(real_train_db)) // 16 * 16
    assert_train_parity(found)


@needs_dali
def test_real_val_geometry_matches_torchvision(hymenoptera: Path) -> None:
    from test_dali_val_parity import assert_geometry_matches

    files = _real_val_files(hymenoptera)
    assert files
    names = [str(p.relative_to(hymenoptera)) for p in files]
    assert_geometry_matches(names, [p.read_bytes() for p in files], resize=256, crop=224)


@pytest.mark.slow
@needs_dali
def test_two_processes_train_an_epoch_of_real_photos(real_train_db: Path, tmp_path: Path) -> None:
    length = len(open_database(real_train_db))
    batch, out = whole_epoch_batch(length, 2), tmp_path / "run"
    _ok(_torchrun(*_epoch_args(real_train_db, out, batch)))
    _assert_sharding(
        _key_logs(out), 2, real_train_db, RankPlan(length, batch, world_size=2, drop_last=True).num_batches(0)
    )
