"""What train.py's flags give each loader: the validation loader gets half the training loader's threads and
workers and, with DALI, queues one batch ahead (it idles between evaluations holding all of it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import needs_dali

from lmdb_dali_train.config import RunConfig
from lmdb_dali_train.data import (
    cores_per_rank,
    default_hw_decoder_load,
    default_threads,
    make_loader,
    val_share,
    val_threads,
)
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


# -- defaults from the cores per rank (issue 19) ----------------------------------------------------------


def _node(monkeypatch: pytest.MonkeyPatch, cores: int, gpus: int, **env: str) -> None:
    """This process on a node of ``cores`` cores and ``gpus`` visible GPUs, with the launcher's ``env``."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for name in (
        "LOCAL_WORLD_SIZE",
        "RANK",
        "SLURM_STEP_TASKS_PER_NODE",
        "SLURM_CPUS_PER_TASK",
        "SLURM_STEP_NUM_TASKS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "cores, gpus, world, env, per_rank",
    [
        (16, 8, 8, {"LOCAL_WORLD_SIZE": "8", "RANK": "0"}, 2),  # torchrun, 8 GPUs on 16 cores
        (16, 8, 16, {"LOCAL_WORLD_SIZE": "8", "RANK": "9"}, 2),  # two such nodes
        (16, 8, 8, {}, 2),  # --multiprocessing-distributed: one rank per GPU
        (128, 8, 8, {}, 16),
        (16, 0, 4, {}, 4),  # four CPU ranks
        (16, 1, 1, {}, 16),
        (64, 8, 16, {"SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_STEP_NUM_TASKS": "16"}, 8),
        (64, 8, 16, {"SLURM_CPUS_PER_TASK": "6", "SLURM_STEP_NUM_TASKS": "16"}, 6),  # srun's --cpus-per-task
    ],
)
def test_cores_per_rank(
    monkeypatch: pytest.MonkeyPatch, cores: int, gpus: int, world: int, env: dict[str, str], per_rank: int
) -> None:
    _node(monkeypatch, cores, gpus, **env)
    assert cores_per_rank(world) == per_rank
    assert default_threads(world) == min(8, per_rank)


def test_hw_decoder_share_grows_as_cores_per_rank_shrink() -> None:
    assert [default_hw_decoder_load(c) for c in (1, 2, 4, 8, 16)] == [0.96, 0.91, 0.82, 0.65, 0.65]


def test_val_threads() -> None:
    assert [val_threads(n) for n in (1, 2, 3, 4, 8)] == [1, 2, 2, 2, 4]


@needs_dali
def test_8_ranks_on_16_cores_get_2_threads_and_the_hardware_decoders_larger_share(
    train_db: Path, val_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What train.py's defaults give rank 3 of 8 on a 16-core, 8-GPU node (DALI's CPU operators stand in for
    the GPU's: the options are the same): training 2 threads and hw_decoder_load 0.91, validation 2 threads;
    an explicit --hw-decoder-load wins."""
    _node(monkeypatch, 16, 8, LOCAL_WORLD_SIZE="8", RANK="3")
    flags = ("--loader", "dali", "--lmdb", "--train", str(train_db), "--val", str(val_db), "-b", "2", "-j", "0")
    for extra, load in (((), 0.91), (("--hw-decoder-load", "0.5"), 0.5)):
        config = RunConfig.from_args(parse_args((*flags, "--device", "cpu", *extra)))
        made = [
            make_loader(config, str(db), train, place=Placement(3, 8, 3), device=torch.device("cpu"))
            for db, train in ((train_db, True), (val_db, False))
        ]
        try:
            assert [(m.opts.num_threads, m.opts.hw_decoder_load) for m in made][0] == (2, load)
            assert made[1].opts.num_threads == 2
        finally:
            for m in made:
                m.close()
