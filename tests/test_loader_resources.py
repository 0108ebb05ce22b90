"""What train.py's flags give each loader: the validation loader gets half the training loader's threads and
workers and, with DALI, queues one batch ahead (it idles between evaluations holding all of it)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import needs_dali

from lmdb_dali_train.config import RunConfig
from lmdb_dali_train.data import make_loader, val_share
from lmdb_dali_train.distributed import Placement
from lmdb_dali_train.flags import parse_args


def loaders(loader: str, train_db: Path, val_db: Path, *flags: str) -> tuple:
    flags = ("--loader", loader, "--lmdb", "--train", str(train_db), "--val", str(val_db), "-b", "8", *flags)
    config = RunConfig.from_args(parse_args(flags))
    cpu = torch.device("cpu")
    return tuple(
        make_loader(config, str(db), train, place=Placement(0, 1, 0), device=cpu)
        for db, train in ((train_db, True), (val_db, False))
    )


def test_val_share() -> None:
    assert [val_share(n) for n in (0, 1, 2, 3, 8)] == [0, 1, 1, 1, 4]


def test_torch_val_loader_gets_half_the_workers(train_db: Path, val_db: Path) -> None:
    train, val = loaders("torch", train_db, val_db, "-j", "4", "--device", "cpu")
    assert (train.loader.num_workers, val.loader.num_workers) == (4, 2)
    train, val = loaders("torch", train_db, val_db, "--dali-threads", "6", "--device", "cpu")  # -j defaults to threads
    assert (train.loader.num_workers, val.loader.num_workers) == (6, 3)


@needs_dali
def test_dali_val_loader_gets_half_the_threads_and_one_batch_ahead(train_db: Path, val_db: Path) -> None:
    train, val = loaders("dali", train_db, val_db, "-j", "0", "--dali-threads", "4", "--device", "cpu")
    try:
        assert (train.opts.num_threads, val.opts.num_threads) == (4, 2)
        assert (train.opts.prefetch, val.opts.prefetch) == (2, 1)
        assert train.opts.py_workers == val.opts.py_workers == 0
        assert len(list(val)) == len(val)  # one batch ahead still runs a whole epoch
    finally:
        train.close()
        val.close()
