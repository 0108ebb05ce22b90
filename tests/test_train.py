"""train.py end to end on the CPU: sharding across processes and nodes, exact resume, data-wait, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

pytest.importorskip("nvidia.dali")

SMALL = ["-a", "resnet18", "--crop-size", "32", "--val-resize", "36", "--device", "cpu", "--print-freq", "5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args: str, nproc: int = 2, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "train.py",
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=_env(**(extra_env or {})), capture_output=True, text=True, timeout=420)


def _key_logs(out: Path) -> dict[int, list[tuple[int, int, str]]]:
    logs = {}
    for path in sorted(out.glob("keys-rank*.tsv")):
        rank = int(path.stem.removeprefix("keys-rank"))
        logs[rank] = [(int(e), int(s), k) for e, s, k in (line.split("\t") for line in path.read_text().splitlines())]
    return logs


def _assert_sharding(logs: dict[int, list[tuple[int, int, str]]], world: int, all_keys: set[str]) -> None:
    assert sorted(logs) == list(range(world))
    steps = {rank: len({s for _, s, _ in rows}) for rank, rows in logs.items()}
    assert len(set(steps.values())) == 1, steps  # equal step counts on every rank
    per_rank = {rank: [k for _, _, k in rows] for rank, rows in logs.items()}
    seen = [k for keys in per_rank.values() for k in set(keys)]
    assert len(seen) == len(set(seen)), "a sample was trained on by two ranks"
    assert set(seen) == all_keys, f"{len(all_keys - set(seen))} samples never seen in the epoch"


def _db_keys(db: Path) -> set[str]:
    from lmdb_io import open_database

    return {k.decode() for k in open_database(db).keys()}


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_two_processes_cover_the_epoch(train_db: Path, tmp_path: Path, loader: str) -> None:
    # 245 images over 2 ranks: 123 each (one wrapped repeat), 3 whole batches of 41: every sample once
    out = tmp_path / "run"
    proc = _torchrun(
        "--loader",
        loader,
        "--lmdb",
        "--train",
        str(train_db),
        "--epochs",
        "1",
        "-b",
        "41",
        "--log-keys",
        "--output-dir",
        str(out),
        "-j",
        "0",
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_sharding(_key_logs(out), 2, _db_keys(train_db))


def test_two_nodes_shard_by_global_rank(train_db: Path, tmp_path: Path) -> None:
    out, port = tmp_path / "run", str(_free_port())
    common = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
    ]
    args = [
        "train.py",
        "--loader",
        "dali",
        "--lmdb",
        "--train",
        str(train_db),
        "--epochs",
        "1",
        "-b",
        "41",
        "--log-keys",
        "--output-dir",
        str(out),
        "-j",
        "0",
        *SMALL,
    ]
    nodes = [
        subprocess.Popen(
            [*common, "--node-rank", str(r), *args],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    results = [node.communicate(timeout=420) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    _assert_sharding(_key_logs(out), 2, _db_keys(train_db))


def test_dataset_size_no_world_size_divides_does_not_hang(val_db: Path, train_db: Path, tmp_path: Path) -> None:
    # 153 images over 3 ranks is 51 each, over 2 it is 77 (one repeat); batch 10 leaves remainders everywhere
    out = tmp_path / "run"
    proc = _torchrun(
        "--loader",
        "dali",
        "--lmdb",
        "--train",
        str(val_db),
        "--val",
        str(val_db),
        "--epochs",
        "1",
        "-b",
        "10",
        "--log-keys",
        "--output-dir",
        str(out),
        "-j",
        "0",
        *SMALL,
        nproc=3,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = _key_logs(out)
    assert {rank: len({s for _, s, _ in rows}) for rank, rows in logs.items()} == {0: 5, 1: 5, 2: 5}
    val = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["count"] for e in val if e["event"] == "val"] == [153]  # each val sample counted once


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _train(db: Path, out: Path, loader: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train.py",
        "--loader",
        loader,
        "--lmdb",
        "--train",
        str(db),
        "--epochs",
        "3",
        "-b",
        "16",
        "--log-keys",
        "--output-dir",
        str(out),
        "-j",
        "0",
        "--lr",
        "0.05",
        *SMALL,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, env=_env(**(env or {})), capture_output=True, text=True, timeout=420)


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_sigterm_then_resume_equals_straight_run(train_db: Path, tmp_path: Path, loader: str) -> None:
    total = 20  # 15 steps per epoch: the run crosses an epoch boundary
    straight = _train(train_db, tmp_path / "straight", loader, "--max-steps", str(total))
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    first = _train(train_db, interrupted, loader, env={"TRAIN_TEST_SIGTERM_AT_STEP": "7"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped by a signal" in first.stdout
    saved = torch.load(next(interrupted.glob("checkpoint-step*.pt")), weights_only=True)
    stopped_at = saved["global_step"]
    assert 7 <= stopped_at < total and saved["step_in_epoch"] == stopped_at  # mid-epoch, at an agreed boundary
    second = _train(train_db, interrupted, loader, "--resume", "auto", "--max-steps", str(total - stopped_at))
    assert second.returncode == 0, second.stderr[-3000:]

    assert _key_logs(interrupted) == _key_logs(tmp_path / "straight")
    if loader == "torch":  # augmentation seeded per sample: the weights match too
        final = _params(tmp_path / "straight" / f"checkpoint-step{total:09d}.pt")
        resumed = _params(interrupted / f"checkpoint-step{total:09d}.pt")
        for name, value in final.items():
            torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-5, msg=name)
        initial = _params(next((tmp_path / "straight").glob("checkpoint-step000000015.pt")))
        assert any(not torch.equal(initial[n], final[n]) for n in final if final[n].is_floating_point())


def _data_wait(out: Path) -> list[float]:
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [e["data_wait"] for e in events if e["event"] == "train"]


def test_data_wait_reads_high_for_a_slow_loader_and_low_for_synthetic(train_db: Path, tmp_path: Path) -> None:
    slow = _train(
        train_db, tmp_path / "slow", "torch", "--max-steps", "10", env={"TRAIN_TEST_LOADER_DELAY_S": "0.3"}
    )  # a loader slowed on purpose
    assert slow.returncode == 0, slow.stderr[-3000:]
    assert min(_data_wait(tmp_path / "slow")) > 0.5
    synthetic = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--synthetic",
            "-b",
            "16",
            "--max-steps",
            "10",
            "--output-dir",
            str(tmp_path / "synthetic"),
            *SMALL,
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synthetic.returncode == 0, synthetic.stderr[-3000:]
    assert max(_data_wait(tmp_path / "synthetic")) < 0.05


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in lines[0], lines[0]


def test_bad_flags_and_paths(hymenoptera: Path, train_db: Path, bad_images: Path, tmp_path: Path) -> None:
    base = ["train.py", "--device", "cpu", "--output-dir", str(tmp_path / "o")]
    _one_line_error(run_cli(*base, "--lmdb", "--train", str(hymenoptera / "train")), "not an LMDB database")
    _one_line_error(run_cli(*base, "--train", str(train_db)), "add --lmdb")
    _one_line_error(run_cli(*base, "--train", str(tmp_path / "missing")), "no such file")
    other = tmp_path / "other.lmdb"
    listing = tmp_path / "l.csv"
    listing.write_text("hopper_gray.jpg,odd\n")
    run_cli("convert.py", "--dataset", str(bad_images), "-o", str(other), "--file-list", str(listing), "-q", check=True)
    _one_line_error(run_cli(*base, "--lmdb", "--train", str(train_db), "--val", str(other)), "class maps differ")
    _one_line_error(run_cli(*base, "--lmdb", "--train", str(train_db), "--amp", "fp16"), "needs CUDA")
    _one_line_error(run_cli(*base, "--lmdb", "--train", str(train_db), "--dist-backend", "nccl"), "needs CUDA")
    _one_line_error(
        run_cli(*base, "--lmdb", "--train", str(train_db), "-a", "resnet9000", "--loader", "torch"),
        "not a torchvision classification model",
    )
    _one_line_error(
        run_cli(*base, "--lmdb", "--train", str(train_db), "--resume", str(tmp_path / "nope.pt")), "no such checkpoint"
    )
    fake = tmp_path / "fake" / "nvidia" / "dali"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("raise ImportError('no DALI here')\n")
    no_dali = run_cli(*base, "--lmdb", "--train", str(train_db), env={"PYTHONPATH": f"{fake.parent.parent}:{REPO}"})
    _one_line_error(no_dali, "pip install nvidia-dali-cuda")
    bad = run_cli(*base, "--loader", "tensorflow")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_resume_on_another_database_is_refused(train_db: Path, val_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(train_db, out, "torch", "--max-steps", "2").returncode == 0
    refused = _train(val_db, out, "torch", "--resume", "auto", "--max-steps", "1")
    _one_line_error(refused, "different dataset")
    forced = _train(val_db, out, "torch", "--resume", "auto", "--max-steps", "1", "--force-resume")
    assert forced.returncode == 0, forced.stderr[-2000:]


def test_help_explains_the_flags() -> None:
    text = " ".join(run_cli("train.py", "--help", check=True).stdout.split())
    for flag in (
        "--arch",
        "--loader",
        "--lmdb",
        "--workers",
        "--dali-threads",
        "--max-steps",
        "--resume",
        "--amp",
        "--channels-last",
        "--synthetic",
        "--multiprocessing-distributed",
        "--dist-url",
        "--log-keys",
    ):
        assert flag in text
    assert "DataLoader worker" in text and "Python processes" in text


def test_multiprocessing_distributed_spawn(train_db: Path, tmp_path: Path) -> None:
    """The original PyTorch-LMDB launcher: one command spawns the processes of this node."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "--multiprocessing-distributed",
        "--procs-per-node",
        "2",
        "--dist-url",
        f"tcp://127.0.0.1:{_free_port()}",
        "--loader",
        "torch",
        "--lmdb",
        "--train",
        str(train_db),
        "--epochs",
        "1",
        "-b",
        "41",
        "--log-keys",
        "--output-dir",
        str(out),
        "-j",
        "0",
        *SMALL,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_sharding(_key_logs(out), 2, _db_keys(train_db))


def test_placement_from_torchrun_slurm_and_nothing() -> None:
    from trainer.distributed import placement_from_env

    torchrun = placement_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank) == (5, 8, 1)
    slurm = placement_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (3, 4, 1)
    assert placement_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1
    single = placement_from_env({})
    assert (single.rank, single.world_size, single.distributed) == (0, 1, False)


def test_dali_file_reader_on_an_imagefolder_counts_val_once(hymenoptera: Path, tmp_path: Path) -> None:
    """--loader dali without --lmdb: DALI's file reader, sharded and padded; val counts 153 images."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "--loader",
        "dali",
        "--train",
        str(hymenoptera / "val"),
        "--val",
        str(hymenoptera / "val"),
        "--epochs",
        "1",
        "-b",
        "32",
        "--output-dir",
        str(out),
        *SMALL,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["count"] for e in events if e["event"] == "val"] == [153]
    assert [e["step_in_epoch"] for e in events if e["event"] == "train"][-1] == 153 // 32
