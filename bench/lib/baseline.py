"""The original PyTorch-LMDB converter and reader (``folder2lmdb.py``), re-implemented as the baseline:
its algorithm as written, with pickle where it used pyarrow's removed ``serialize`` (as its current forks do);
the reader is its ``ImageFolderLMDB.__getitem__`` minus image decoding.
"""

import os
import pickle
import sys
from typing import Any

import lmdb
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

MAP_SIZE = 1 << 40
WRITE_FREQUENCY = 5000


def raw_reader(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def identity_collate(batch: list[Any]) -> list[Any]:
    """``collate_fn=lambda x: x`` of the original, at module level so workers can unpickle it."""
    return batch


def folder2lmdb(root: str, out: str, num_workers: int = 2, write_frequency: int = WRITE_FREQUENCY) -> int:
    """Convert the ImageFolder tree ``root`` into the LMDB directory ``out``; returns the image count."""
    dataset = ImageFolder(root, loader=raw_reader)
    loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=identity_collate)
    os.makedirs(out, exist_ok=True)
    db = lmdb.open(out, subdir=True, map_size=MAP_SIZE, readonly=False, meminit=False, map_async=True)
    txn = db.begin(write=True)
    idx = -1
    for idx, data in enumerate(loader):
        image, label = data[0]
        txn.put(f"{idx}".encode("ascii"), pickle.dumps((image, label)))
        if idx % write_frequency == 0:
            txn.commit()
            txn = db.begin(write=True)
    txn.commit()
    keys = [f"{k}".encode("ascii") for k in range(idx + 1)]
    with db.begin(write=True) as txn:
        txn.put(b"__keys__", pickle.dumps(keys))
        txn.put(b"__len__", pickle.dumps(len(keys)))
    db.sync()
    db.close()
    return len(keys)


class BaselineReader:
    """The original ``ImageFolderLMDB`` without decoding: ``read(i)`` -> (raw image bytes, label)."""

    def __init__(self, path: str) -> None:
        self.env = lmdb.open(
            path, subdir=os.path.isdir(path), readonly=True, lock=False, readahead=False, meminit=False
        )
        with self.env.begin(write=False) as txn:
            length_raw, keys_raw = txn.get(b"__len__"), txn.get(b"__keys__")
        assert length_raw is not None and keys_raw is not None, f"{path}: not a folder2lmdb database"
        self.length: int = pickle.loads(length_raw)
        self.keys: list[bytes] = pickle.loads(keys_raw)

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> tuple[bytes, int]:
        with self.env.begin(write=False) as txn:
            byteflow = txn.get(self.keys[index])
        assert byteflow is not None  # every key in __keys__ was written
        return pickle.loads(byteflow)

    def close(self) -> None:
        self.env.close()


def main() -> None:
    """``python -m bench.lib.baseline DATASET OUT``: run it as users ran folder2lmdb.py."""
    print(f"{folder2lmdb(sys.argv[1], sys.argv[2])} images -> {sys.argv[2]}")


if __name__ == "__main__":
    main()
