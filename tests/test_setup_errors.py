"""Distributed set-up and input errors that must be one line, not a hang or a traceback (issue 10, part 6):
a multi-node world without MASTER_ADDR, SLURM variables without an srun step, two ranks on one GPU, the
collective timeout as a flag, and bad flags or crafted databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import torch
from conftest import assert_one_line_error, copy_tree, lmdb_io_cli, repo_pythonpath, run_in_session, run_main

from lmdb_dali_train.errors import ConfigError
from lmdb_dali_train.flags import build_parser
from lmdb_dali_train.main import main as train_main

TINY = ["--synthetic", "--device", "cpu", "-a", "resnet18", "--crop-size", "32", "-b", "2", "--print-freq", "1"]
HANG_LIMIT_S = 90  # a refusal takes seconds; the bug waits 30 minutes for peers that never come


def _train_subprocess(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """train.py in its own session, killed with its children if it hangs (the failure being tested)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "RANK", "WORLD_SIZE"))}
    full_env = {**base, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "train.py", *TINY, "--output-dir", str(tmp_path / "run"), *args]
    return run_in_session(cmd, full_env, HANG_LIMIT_S, f"train.py hung instead of refusing: {' '.join(args)}")


@pytest.mark.slow
def test_multi_node_spawn_without_master_addr_is_refused(tmp_path: Path) -> None:
    result = _train_subprocess(
        tmp_path, "--multiprocessing-distributed", "--world-size", "2", "--rank", "0", "--procs-per-node", "1", env={}
    )
    assert_one_line_error(result, "MASTER_ADDR")


@pytest.mark.slow
def test_multi_node_slurm_step_without_master_addr_is_refused(tmp_path: Path) -> None:
    slurm = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_NNODES": "2",
    }
    assert_one_line_error(_train_subprocess(tmp_path, env=slurm), "MASTER_ADDR")


@pytest.mark.slow
def test_slurm_allocation_without_srun_runs_one_process(tmp_path: Path) -> None:
    """``python train.py`` inside ``sbatch -n 8`` (no srun step) is one process, said so, not rank 0 of 8."""
    result = _train_subprocess(
        tmp_path, "--max-steps", "2", env={"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "42"}
    )
    assert result.returncode == 0, result.stderr
    assert "srun" in result.stderr and "x1" in result.stdout  # "resnet18 on cpu x1": a world of one


def test_placement_trusts_slurm_only_inside_an_srun_step() -> None:
    from lmdb_dali_train.distributed import placement_from_env

    batch_script = placement_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"})
    assert (batch_script.rank, batch_script.world_size) == (0, 1)
    step = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1"}
    srun = placement_from_env(step)
    assert (srun.rank, srun.world_size, srun.local_rank) == (3, 4, 1)  # the step's tasks, not the allocation's


def test_two_ranks_on_one_gpu_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmdb_dali_train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert distributed.pick_device(True, 1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="local rank 2.*2 GPUs"):
        distributed.pick_device(True, 2)


def test_collective_timeout_is_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmdb_dali_train import distributed

    default = build_parser().parse_args([]).dist_timeout
    assert 0 < default <= 600  # well below torch's 30 minutes
    seen = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **kw: seen.update(kw))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    place = distributed.Placement(rank=0, world_size=2, local_rank=0)
    distributed.init_process_group(place, torch.device("cpu"), None, "env://", timeout_s=42)
    assert seen["timeout"].total_seconds() == 42


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--lr", "-1"], "--lr must be positive"),
        (["--lr", "0"], "--lr must be positive"),
        (["--momentum", "1.5"], "--momentum"),
        (["--wd", "-0.1"], "--wd"),
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--dist-timeout", "0"], "--dist-timeout"),
    ],
)
def test_bad_numbers_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = run_main(train_main, *TINY, "--max-steps", "1", "--output-dir", str(tmp_path), *args)
    assert_one_line_error(result, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    args = ["--synthetic", "--device", "cuda", "--max-steps", "1", "--output-dir", str(tmp_path)]
    assert_one_line_error(run_main(train_main, *args), "--device cuda", "no CUDA device")


def _rewrite(db: Path, **entries: bytes | None) -> None:
    from lmdb_io.env import close_shared_env

    close_shared_env(str(db))
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        for name, value in entries.items():
            key = f"__{name}__".encode()
            if value is None:
                txn.delete(key)
            else:
                txn.put(key, value)
    env.close()


def _meta(db: Path) -> dict:
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        meta = json.loads(txn.get(b"__meta__"))
    env.close()
    return meta


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda m: {k: v for k, v in m.items() if k != "classes"}, "__meta__"),
        (lambda m: {**m, "key_width": "eight"}, "__meta__"),
        (lambda m: {**m, "classes": "ants"}, "__meta__"),
        (lambda m: [m], "__meta__"),
    ],
)
def test_malformed_meta_is_one_line(val_db: Path, tmp_path: Path, damage, fragment: str) -> None:
    db = copy_tree(val_db, tmp_path / "db.lmdb")
    _rewrite(db, meta=json.dumps(damage(_meta(db))).encode())
    assert_one_line_error(lmdb_io_cli("info", str(db)), fragment)
    args = ["--loader", "torch", "--lmdb", "--val", str(db), "--evaluate", "--device", "cpu"]
    assert_one_line_error(run_main(train_main, *args, "--output-dir", str(tmp_path / "o")), fragment)


def test_special_keys_that_are_not_what_they_say_are_one_line(val_db: Path, tmp_path: Path) -> None:
    for name, value, fragment in (
        ("paths", b"\x80\x04pickled", "__paths__"),
        ("len", b"many", "__len__"),
        ("targets", b"\x00" * 3, "__targets__"),
    ):
        db = copy_tree(val_db, tmp_path / f"{name}.lmdb")
        _rewrite(db, **{name: value})
        result = lmdb_io_cli("verify", str(db), "-q")
        assert_one_line_error(result, fragment)


def test_a_database_of_zero_images_is_one_line(val_db: Path, tmp_path: Path) -> None:
    db = copy_tree(val_db, tmp_path / "empty.lmdb")
    meta = _meta(db)
    meta["counts"] = {**meta["counts"], "images": 0, "per_class": [0] * len(meta["classes"])}
    _rewrite(db, len=b"0", keys=b"", targets=b"", paths=b"[]", meta=json.dumps(meta).encode())
    args = ["--loader", "torch", "--lmdb", "--train", str(db), "--device", "cpu", "--output-dir", str(tmp_path / "o")]
    assert_one_line_error(run_main(train_main, *args), "no images")
