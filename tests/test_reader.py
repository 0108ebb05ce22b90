"""ImageFolderLMDB as a drop-in for ImageFolder, the shared Environment, and the raw fast path."""

from __future__ import annotations

import json
import operator
import pickle
import shutil
from collections import Counter
from pathlib import Path

import lmdb
import pytest
import torch
from conftest import convert, lmdb_io_cli
from datagen import ORIGINAL, GeneratedDataset
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import CorruptRecordError, ImageFolderLMDB, open_database
from lmdb_io.env import close_shared_env

TO_TENSOR = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])


def _imagefolder_file(path: str) -> bool:
    """ImageFolder's own rule (by extension), less hidden files, which the converter leaves out by design
    (ImageFolder lists an AppleDouble ``._x.jpg`` and then cannot load it)."""
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and not Path(path).name.startswith(".")


@pytest.fixture(scope="module")
def val_own_db(val_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The validation tree with its own class map (no --classes-from): what ImageFolder(val_dir) numbers."""
    out = tmp_path_factory.mktemp("reader") / "val-own.lmdb"
    convert(val_dir, out)
    return out


def test_every_val_file_is_listed_by_imagefolder(generated: GeneratedDataset) -> None:
    """What makes the parity below complete: ImageFolder lists every file of the val tree."""
    assert all(f.listed_by_imagefolder for f in generated.val.files)
    assert generated.val.stored == generated.val.files


def test_attributes_known_at_construction(generated: GeneratedDataset, val_dir: Path, val_own_db: Path) -> None:
    reference = ImageFolder(str(val_dir), is_valid_file=_imagefolder_file)
    dataset = ImageFolderLMDB(val_own_db)
    assert dataset.classes == reference.classes == generated.val.classes
    assert dataset.class_to_idx == reference.class_to_idx
    assert dataset.targets == reference.targets
    assert len(dataset) == len(reference) == len(generated.val.stored)
    assert [Path(p).relative_to(val_dir).as_posix() for p, _ in reference.samples] == [p for p, _ in dataset.samples]
    assert dataset.imgs == dataset.samples and [t for _, t in dataset.samples] == dataset.targets


def test_items_equal_imagefolder_items(generated: GeneratedDataset, val_dir: Path, val_own_db: Path) -> None:
    reference = ImageFolder(str(val_dir), transform=TO_TENSOR, is_valid_file=_imagefolder_file)
    dataset = ImageFolderLMDB(val_own_db, transform=TO_TENSOR, target_transform=lambda t: t + 100)
    outcomes = [f.outcome for f in generated.val.stored]
    for index in range(len(dataset)):
        (expected, label), (image, target) = reference[index], dataset[index]
        assert target == label + 100
        assert image.shape == expected.shape == (3, 32, 32)
        if outcomes[index] == ORIGINAL:  # the same bytes: the same pixels
            assert torch.equal(expected, image), dataset.samples[index]
        else:  # transcoded at quality 95 from the image ImageFolder decodes
            diff = (expected.float() - image.float()).abs().mean().item()
            assert diff < 3.0, (dataset.samples[index], diff)


def test_pickles_and_reads_after_unpickling(val_db: Path) -> None:
    dataset = ImageFolderLMDB(val_db, transform=TO_TENSOR)
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone) == len(dataset) and clone.targets == dataset.targets
    assert torch.equal(clone[5][0], dataset[5][0])


# What the workers run needs no torchvision and no test module (each costs seconds to import in a spawned
# worker): Pillow shrinks each decoded image, and the batches come back as lists.
SHRINK = operator.methodcaller("resize", (8, 8))


@pytest.mark.parametrize("context, workers", [pytest.param("spawn", 1, marks=pytest.mark.slow), ("fork", 2)])
def test_dataloader_workers(val_db: Path, context: str, workers: int) -> None:
    """Spawn: the dataset pickles and reads in a fresh interpreter (one worker: each imports torch anew).
    Fork: workers inherit the parent's open Environment and must reopen their own."""
    dataset = ImageFolderLMDB(val_db, transform=SHRINK)
    dataset[0]  # the parent opens the shared Environment first
    loader = DataLoader(dataset, batch_size=8, num_workers=workers, multiprocessing_context=context, collate_fn=list)
    items = [item for batch in loader for item in batch]
    assert [target for _, target in items] == dataset.targets
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        assert items[index][0].tobytes() == dataset[index][0].tobytes()


def test_two_datasets_on_one_database(val_db: Path) -> None:
    first, second = ImageFolderLMDB(val_db, transform=TO_TENSOR), ImageFolderLMDB(val_db, transform=TO_TENSOR)
    assert torch.equal(first[3][0], second[3][0])
    assert open_database(val_db).read(3)[1] == first[3][1]


def test_raw_path_returns_bytes_and_label(generated: GeneratedDataset, val_dir: Path, val_db: Path) -> None:
    db = open_database(val_db)
    for index, f in enumerate(generated.val.stored):
        payload, label = db.read(index)
        assert isinstance(payload, memoryview)
        assert label == db.targets[index] == db.class_to_idx[f.class_name]
        if f.outcome == ORIGINAL:
            assert bytes(payload) == (val_dir / f.rel).read_bytes()


def test_checksum_mismatch_names_the_key(val_db: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.lmdb"
    shutil.copytree(val_db, broken)
    db = open_database(broken)
    key, total = db.key(10), len(db)
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
    result = lmdb_io_cli("verify", str(broken), "-q")
    assert (
        result.returncode == ExitCode.BAD_RECORDS and key.decode() in result.stdout and f"1 of {total}" in result.stdout
    )
    assert db.paths()[10] in result.stdout  # and the source path
    close_shared_env(str(broken))


def test_verify_and_info_cli(generated: GeneratedDataset, val_db: Path) -> None:
    stored = generated.val.stored
    verify = lmdb_io_cli("verify", str(val_db), "--decode", "-q", "--workers", "2")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"all {len(stored)} records OK" in verify.stdout and "decoding with Pillow" in verify.stdout
    info = lmdb_io_cli("info", str(val_db))
    assert info.returncode == 0, info.stderr
    ants = sum(1 for f in stored if f.class_name == "ants")
    assert f"images   {len(stored)} " in info.stdout and "schema v1" in info.stdout and f"ants ({ants})" in info.stdout
    summary = json.loads(lmdb_io_cli("info", str(val_db), "--json").stdout)
    counts = Counter(f.class_name for f in stored)
    assert summary["images"] == len(stored) and summary["skipped_at_conversion"] == 0
    assert summary["per_class"] == {c: counts[c] for c in generated.train.classes}  # "cicadas": 0
    assert summary["stored_transcoded"] == sum(1 for f in stored if f.outcome != ORIGINAL)
