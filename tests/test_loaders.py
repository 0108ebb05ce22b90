"""Both loaders over hymenoptera databases, on DALI's CPU operators: what they deliver, to which rank."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import convert

from lmdb_io import open_database
from lmdb_io.shard import epoch_plan
from lmdb_io.torch_loader import IMAGENET_MEAN, IMAGENET_STD, make_torch_loader

pytest.importorskip("nvidia.dali")
from dali_pipeline import make_dali_loader

LOADERS = {"dali": make_dali_loader, "torch": make_torch_loader}


def _make(kind: str, path: Path, batch: int, **kw):
    if kind == "torch":
        kw.setdefault("workers", 0)
    return LOADERS[kind](path, batch, **kw)


def _epoch_indices(loader) -> tuple[int, list[int], list[bool]]:
    batches, indices, real = 0, [], []
    for batch in loader:
        assert bool(torch.isfinite(batch.images).all())
        batches += 1
        indices += batch.indices.tolist()
        real += batch.real.tolist()
    return batches, indices, real


@pytest.mark.parametrize("layout, half", [(False, False), (True, True)])
def test_dali_shapes_dtypes_layouts(train_db: Path, layout: bool, half: bool) -> None:
    loader = make_dali_loader(train_db, 8, train=True, crop=64, channels_last=layout, half=half)
    batch = next(iter(loader))
    assert batch.images.shape == ((8, 64, 64, 3) if layout else (8, 3, 64, 64))
    assert batch.images.dtype == (torch.float16 if half else torch.float32)
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (8,)
    db = open_database(train_db)
    assert batch.labels.tolist() == [int(db.targets[i]) for i in batch.indices.tolist()]
    assert -3 < float(batch.images.float().mean()) < 3  # normalized, not 0..255


@pytest.mark.parametrize("kind", ["dali", "torch"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_equal_shards(train_db: Path, val_db: Path, kind: str, world_size: int) -> None:
    db = open_database(train_db)
    keys = {}
    for rank in range(world_size):
        loader = _make(kind, train_db, 16, train=True, rank=rank, world_size=world_size, seed=5, crop=32)
        batches, indices, _ = _epoch_indices(loader)
        assert batches == len(loader) == (-(-len(db) // world_size)) // 16
        assert indices == epoch_plan(len(db), rank, world_size, 0, 5, True, 16, True).indices.tolist()
        keys[rank] = [db.key(i) for i in indices]
    delivered = [k for rank_keys in keys.values() for k in rank_keys]
    assert len(delivered) == len(set(delivered))  # disjoint: no sample twice in an epoch
    # validation: padded to whole batches, every sample counted exactly once across ranks
    counted, batch_counts = [], set()
    for rank in range(world_size):
        loader = _make(kind, val_db, 16, train=False, rank=rank, world_size=world_size, crop=32, val_resize=40)
        batches, indices, real = _epoch_indices(loader)
        batch_counts.add(batches)
        counted += [i for i, r in zip(indices, real, strict=True) if r]
    assert len(batch_counts) == 1
    assert sorted(counted) == list(range(len(open_database(val_db))))


@pytest.mark.parametrize("kind", ["dali", "torch"])
def test_epochs_differ_and_repeat_by_seed(train_db: Path, kind: str) -> None:
    loader = _make(kind, train_db, 16, train=True, seed=3, crop=32)
    first, second = _epoch_indices(loader)[1], _epoch_indices(loader)[1]
    assert first != second
    again = _make(kind, train_db, 16, train=True, seed=3, crop=32)
    assert _epoch_indices(again)[1] == first
    other = _make(kind, train_db, 16, train=True, seed=4, crop=32)
    assert _epoch_indices(other)[1] != first


def test_dali_parallel_source_with_two_workers(train_db: Path) -> None:
    serial = make_dali_loader(train_db, 16, train=True, seed=2, crop=32, py_workers=0)
    parallel = make_dali_loader(train_db, 16, train=True, seed=2, crop=32, py_workers=2)
    assert _epoch_indices(parallel)[1] == _epoch_indices(serial)[1]
    assert _epoch_indices(parallel)[1] == epoch_plan(245, 0, 1, 1, 2, True, 16, True).indices.tolist()


def test_two_pipelines_on_one_database(train_db: Path) -> None:
    train = make_dali_loader(train_db, 16, train=True, crop=32)
    val = make_dali_loader(train_db, 16, train=False, crop=32, val_resize=40)
    t, v = iter(train), iter(val)
    for _ in range(3):
        assert next(t).images.shape == next(v).images.shape == (16, 3, 32, 32)


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() * std + mean) * 255


@pytest.fixture(scope="module")
def parity_db(hymenoptera: Path, bad_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hymenoptera val plus the EXIF-rotated, grayscale and CMYK bad-images files, in one database."""
    root = tmp_path_factory.mktemp("parity")
    listing = root / "files.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        for path in sorted((hymenoptera / "val").glob("*/*")):
            writer.writerow([f"hymenoptera/val/{path.parent.name}/{path.name}", path.parent.name])
        for name in ("hopper_orientation_6.jpg", "hopper_gray.jpg", "pil_sample_cmyk.jpg"):
            writer.writerow([f"bad-images/{name}", "ants"])
    out = root / "parity.lmdb"
    convert(hymenoptera.parent, out, "--file-list", str(listing))
    return out


def test_val_parity_between_dali_cpu_and_torchvision(parity_db: Path) -> None:
    dali = make_dali_loader(parity_db, 16, train=False)
    torch_loader = make_torch_loader(parity_db, 16, train=False, workers=0)
    worst, count = 0.0, 0
    for a, b in zip(dali, torch_loader, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        diff = (_to_pixels(a.images) - _to_pixels(b.images)).abs().mean(dim=(1, 2, 3))
        real = a.real
        worst = max(worst, float(diff[real].max()))
        count += int(real.sum())
    assert count == len(open_database(parity_db)) == 156
    assert worst <= 3.0, f"worst per-image mean abs difference {worst:.2f} / 255"


def test_bad_images_database_decodes_in_both_loaders(bad_images: Path, tmp_path: Path) -> None:
    listing = tmp_path / "files.csv"
    listing.write_text("".join(f"{p.name},odd\n" for p in sorted(bad_images.glob("*.jpg"))))
    out = tmp_path / "bad.lmdb"
    convert(bad_images, out, "--file-list", str(listing))
    n = len(open_database(out))
    for kind in ("dali", "torch"):
        loader = _make(kind, out, 4, train=False, crop=64, val_resize=72)
        batches, indices, real = _epoch_indices(loader)
        assert sum(real) == n
        train = _make(kind, out, 4, train=True, crop=64)
        assert _epoch_indices(train)[0] == n // 4


def test_verify_decode_names_a_record_dali_cannot_decode(val_db: Path, tmp_path: Path) -> None:
    import shutil

    import lmdb
    from conftest import run_cli

    from dali_pipeline.decode_check import undecodable_records
    from lmdb_io import ImageFormat
    from lmdb_io.env import close_shared_env
    from lmdb_io.record import encode_record

    broken = tmp_path / "broken.lmdb"
    shutil.copytree(val_db, broken)
    key = open_database(broken).key(7)
    close_shared_env(str(broken))
    env = lmdb.open(str(broken), map_size=0)
    with env.begin(write=True) as txn:  # a valid record (checksum fine) holding a JPEG with no image data
        txn.put(key, encode_record(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 300 + b"\xff\xd9", 0, ImageFormat.JPEG))
    env.close()
    bad = undecodable_records(open_database(broken), range(153), batch_size=16)
    assert [i for i, _ in bad] == [7] and key.decode() in bad[0][1]
    proc = run_cli("-m", "lmdb_io", "verify", str(broken), "--decode", "-q")
    assert proc.returncode == 1 and "DALI's CPU decoder" in proc.stdout and "1 of 153" in proc.stdout
