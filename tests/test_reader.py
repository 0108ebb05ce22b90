"""ImageFolderLMDB as a drop-in for ImageFolder, the shared Environment, and the raw fast path."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import lmdb
import pytest
import torch
from conftest import run_cli
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from lmdb_io import CorruptRecordError, ImageFolderLMDB, open_database
from lmdb_io.env import close_shared_env

TO_TENSOR = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])


def test_attributes_known_at_construction(hymenoptera: Path, val_db: Path) -> None:
    reference = ImageFolder(str(hymenoptera / "val"))
    dataset = ImageFolderLMDB(val_db)
    assert dataset.classes == reference.classes
    assert dataset.class_to_idx == reference.class_to_idx
    assert dataset.targets == reference.targets
    assert len(dataset) == len(reference) == 153
    assert [Path(p).name for p, _ in reference.samples] == [Path(p).name for p, _ in dataset.samples]


def test_items_equal_imagefolder_items(hymenoptera: Path, val_db: Path) -> None:
    reference = ImageFolder(str(hymenoptera / "val"), transform=TO_TENSOR)
    dataset = ImageFolderLMDB(val_db, transform=TO_TENSOR, target_transform=lambda t: t + 100)
    for index in (0, 77, 152):
        (expected, label), (image, target) = reference[index], dataset[index]
        assert torch.equal(expected, image)
        assert target == label + 100


def test_pickles_and_reads_after_unpickling(val_db: Path) -> None:
    dataset = ImageFolderLMDB(val_db, transform=TO_TENSOR)
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone) == len(dataset) and clone.targets == dataset.targets
    assert torch.equal(clone[5][0], dataset[5][0])


def _collect(loader: DataLoader) -> list[int]:
    return [int(t) for _, targets in loader for t in targets]


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_dataloader_workers(val_db: Path, context: str) -> None:
    dataset = ImageFolderLMDB(val_db, transform=TO_TENSOR)
    dataset[0]  # the parent opens the shared Environment first: forked workers must reopen their own
    loader = DataLoader(dataset, batch_size=16, num_workers=2, multiprocessing_context=context)
    assert _collect(loader) == dataset.targets


def test_two_datasets_on_one_database(val_db: Path) -> None:
    first, second = ImageFolderLMDB(val_db, transform=TO_TENSOR), ImageFolderLMDB(val_db, transform=TO_TENSOR)
    assert torch.equal(first[3][0], second[3][0])
    assert open_database(val_db).read(3)[1] == first[3][1]


def test_raw_path_returns_bytes_and_label(hymenoptera: Path, val_db: Path) -> None:
    db = open_database(val_db)
    payload, label = db.read(0)
    assert bytes(payload) == (hymenoptera / "val" / db.paths()[0]).read_bytes()
    assert label == db.targets[0] == 0


def test_checksum_mismatch_names_the_key(val_db: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.lmdb"
    shutil.copytree(val_db, broken)
    db = open_database(broken)
    key = db.key(10)
    close_shared_env(str(broken))
    env = lmdb.open(str(broken), map_size=0)
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(key))
        value[-100] ^= 0xFF
        txn.put(key, bytes(value))
    env.close()
    db = open_database(broken)
    with pytest.raises(CorruptRecordError, match=key.decode()):
        db.read(10)
    assert db.read(10, verify=False)[1] == db.targets[10]  # the switch: no check, no error
    with pytest.raises(CorruptRecordError, match="checksum"):
        ImageFolderLMDB(broken)[10]
    proc = run_cli("-m", "lmdb_io", "verify", str(broken), "-q")
    assert proc.returncode == 1 and key.decode() in proc.stdout and "1 of 153" in proc.stdout


def test_verify_and_info_cli(val_db: Path) -> None:
    verify = run_cli("-m", "lmdb_io", "verify", str(val_db), "--decode", "-q", check=True)
    assert "all 153 records OK" in verify.stdout
    info = run_cli("-m", "lmdb_io", "info", str(val_db), check=True)
    assert "153" in info.stdout and "schema v1" in info.stdout and "ants (70)" in info.stdout
