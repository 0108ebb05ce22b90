"""train.py on the CPU: sharding across processes and nodes, exact resume, evaluation, data-wait, errors.

Runs of train.py (torchrun, spawn, plain subprocesses) are marked ``slow``; argument, path and
configuration errors run in this process through ``lmdb_dali_train.main.main`` and stop before any training.
Single-node torchrun picks its own port (``--standalone``); the two-node and ``--dist-url`` runs hold a
reserved port for the whole run (``conftest.reserved_port``). Data: the generated databases, sizes read
from them; the validation database has an odd size, so two and three ranks wrap around.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    assert_one_line_error,
    convert,
    fault_env,
    needs_dali,
    repo_pythonpath,
    reserved_port,
    run_main,
)

from bench.lib import runlog
from lmdb_dali_train.exit_codes import ExitCode
from lmdb_dali_train.flags import build_parser
from lmdb_dali_train.main import main as train_main
from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan

LOADERS = [pytest.param("dali", marks=needs_dali), "torch"]
SMALL = ["-a", "resnet18", "--crop-size", "32", "--val-resize", "36", "--device", "cpu", "--print-freq", "5"]
TIMEOUT = 420


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, env=_env(**(env or {})), capture_output=True, text=True, timeout=TIMEOUT)


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """torchrun on one node; ``--standalone`` binds its own free port (no race for one)."""
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "train.py",
            *args,
        ]
    )


def _train(db: Path, out: Path, loader: str, *extra: str, env: dict[str, str] | None = None):
    """One training process: 3 epochs of batch 8 (the run stops earlier with --max-steps)."""
    cmd = [sys.executable, "train.py", "--loader", loader, "--lmdb", "--train", str(db), "--epochs", "3", "-b", "8"]
    cmd += ["--log-keys", "--output-dir", str(out), "-j", "0", "--lr", "0.05", *SMALL, *extra]
    return _run(cmd, env)


def _ok(proc: subprocess.CompletedProcess[str], code: int = ExitCode.OK) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _events(out: Path, kind: str) -> list[dict]:
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == kind]


def _key_logs(out: Path) -> dict[int, list[tuple[int, int, str]]]:
    logs = {}
    for path in sorted(out.glob("keys-rank*.tsv")):
        rank = int(path.stem.removeprefix("keys-rank"))
        logs[rank] = [(int(e), int(s), k) for e, s, k in (line.split("\t") for line in path.read_text().splitlines())]
    return logs


def _assert_sharding(logs: dict[int, list[tuple[int, int, str]]], world: int, db: Path, steps: int) -> None:
    """Every rank ran ``steps`` steps; the ranks' samples are disjoint and cover the database."""
    database = open_database(db)
    all_keys = {database.key(i).decode() for i in range(len(database))}
    assert sorted(logs) == list(range(world))
    assert {rank: len({s for _, s, _ in rows}) for rank, rows in logs.items()} == dict.fromkeys(range(world), steps)
    per_rank = {rank: [k for _, _, k in rows] for rank, rows in logs.items()}
    seen = [k for keys in per_rank.values() for k in set(keys)]
    assert len(seen) == len(set(seen)), "a sample was trained on by two ranks"
    assert set(seen) == all_keys, f"{len(all_keys - set(seen))} samples never seen in the epoch"


def whole_epoch_batch(length: int, world: int) -> int:
    """A batch size that divides each rank's share (so one epoch sees every sample) with at least 2 steps,
    as large as possible up to 16; the share itself (one step) if it is prime."""
    per_rank = -(-length // world)
    return max((b for b in range(2, 17) if per_rank % b == 0 and per_rank // b >= 2), default=per_rank)


def _epoch_args(db: Path, out: Path, batch: int, loader: str = "dali") -> list[str]:
    """One epoch of ``db`` with ``--log-keys`` (the keys each rank trained on), no loader workers."""
    args = ["--loader", loader, "--lmdb", "--train", str(db), "--epochs", "1", "-b", str(batch), "--log-keys"]
    return [*args, "--output-dir", str(out), "-j", "0", *SMALL]


# -- sharding across processes and nodes ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
def test_two_processes_cover_the_epoch(val_db: Path, tmp_path: Path, loader: str) -> None:
    # an odd-sized database over 2 ranks: the second rank's share ends in a wrapped repeat (padding,
    # trained on but not logged); the batch divides each share, so one epoch sees every sample once
    length = len(open_database(val_db))
    assert length % 2 == 1
    batch = whole_epoch_batch(length, 2)
    out = tmp_path / "run"
    _ok(_torchrun(*_epoch_args(val_db, out, batch, loader)))
    _assert_sharding(_key_logs(out), 2, val_db, RankPlan(length, batch, world_size=2, drop_last=True).num_batches(0))


@pytest.mark.slow
@needs_dali
def test_two_nodes_shard_by_global_rank(val_db: Path, tmp_path: Path) -> None:
    """Two torchrun launchers (node ranks 0 and 1, one process each) stop after 2 steps with one checkpoint
    (rank 0's), then resume from it the same way: over both runs each sample of the epoch once."""
    length = len(open_database(val_db))
    batch, out = whole_epoch_batch(length, 2), tmp_path / "run"
    steps = RankPlan(length, batch, world_size=2, drop_last=True).num_batches(0)
    assert steps > 2

    def two_nodes(*extra: str) -> None:
        with reserved_port() as port:
            common = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
            common += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
            nodes = [
                subprocess.Popen(
                    [*common, "--node-rank", str(r), "train.py", *_epoch_args(val_db, out, batch), *extra],
                    cwd=REPO,
                    env=_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for r in (0, 1)
            ]
            try:
                results = [node.communicate(timeout=TIMEOUT) for node in nodes]
            finally:
                for node in nodes:
                    if node.poll() is None:
                        node.kill()
                        node.wait()
        assert [node.returncode for node in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]

    two_nodes("--max-steps", "2")
    assert [p.name for p in out.glob("checkpoint-step*.pt")] == ["checkpoint-step000000002.pt"]
    two_nodes("--resume", "auto")
    assert [e["global_step"] for e in _events(out, "end")] == [2, steps]  # the second run went on from step 2
    assert sorted(p.name for p in out.glob("checkpoint-step*.pt"))[-1] == f"checkpoint-step{steps:09d}.pt"
    _assert_sharding(_key_logs(out), 2, val_db, steps)


@pytest.mark.slow
@needs_dali
def test_dataset_size_no_world_size_divides_does_not_hang(val_db: Path, tmp_path: Path) -> None:
    # batch 4 on 3 ranks: the shares wrap around and leave a remainder in training and validation
    length, world, batch = len(open_database(val_db)), 3, 4
    assert length % world and -(-length // world) % batch
    out = tmp_path / "run"
    args = _epoch_args(val_db, out, batch) + ["--val", str(val_db)]
    _ok(_torchrun(*args, nproc=world))
    logs = _key_logs(out)
    steps = RankPlan(length, batch, world_size=world, drop_last=True).num_batches(0)
    assert {rank: len({s for _, s, _ in rows}) for rank, rows in logs.items()} == dict.fromkeys(range(world), steps)
    assert [e["count"] for e in _events(out, "val")] == [length]  # each val sample counted once


@pytest.mark.slow
def test_multiprocessing_distributed_spawn(val_db: Path, tmp_path: Path) -> None:
    """The original PyTorch-LMDB launcher: one command spawns the processes of this node."""
    length = len(open_database(val_db))
    batch, out = whole_epoch_batch(length, 2), tmp_path / "run"
    with reserved_port() as port:
        cmd = [sys.executable, "train.py", "--multiprocessing-distributed", "--procs-per-node", "2"]
        cmd += ["--dist-url", f"tcp://127.0.0.1:{port}", *_epoch_args(val_db, out, batch, "torch")]
        proc = _run(cmd)
    _ok(proc)
    _assert_sharding(_key_logs(out), 2, val_db, RankPlan(length, batch, world_size=2, drop_last=True).num_batches(0))


@pytest.mark.slow
@needs_dali
def test_dali_file_reader_on_an_imagefolder_counts_val_once(val_dir: Path, tmp_path: Path) -> None:
    """--loader dali without --lmdb: DALI's file reader, sharded and padded; val counts every image once."""
    tree = tmp_path / "val"
    shutil.copytree(val_dir, tree)
    for hidden in tree.rglob(".*"):  # AppleDouble "._x.jpg": listed by ImageFolder and DALI, decodable by neither
        hidden.unlink()
    count = sum(1 for p in tree.rglob("*") if p.is_file())
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--loader", "dali", "--train", str(tree), "--val", str(tree)]
    _ok(_run(cmd + ["--epochs", "1", "-b", "8", "--output-dir", str(out), *SMALL]))
    assert [e["count"] for e in _events(out, "val")] == [count]
    assert [e["step_in_epoch"] for e in _events(out, "train")][-1] == count // 8


# -- resume, evaluation ------------------------------------------------------------------------------


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "loader, workers, stop",
    [
        ("torch", "0", "signal"),
        pytest.param("dali", "0", "signal", marks=needs_dali),
        pytest.param("dali", "2", "max-steps", marks=needs_dali),  # the source in two spawned processes
    ],
)
def test_stop_then_resume_equals_straight_run(
    train_db: Path, tmp_path: Path, loader: str, workers: str, stop: str
) -> None:
    """Stopped mid-epoch (SIGTERM at step 3, or --max-steps 5) and resumed across an epoch boundary: the same
    samples in the same order as a straight run, and bit-identical weights: each sample's crop and flip are a
    function of (seed, epoch, index) in both loaders (``lmdb_io.reading.augment``), whatever process or
    pipeline draws them."""
    per_epoch = RankPlan(len(open_database(train_db)), 8).num_batches(0)
    assert per_epoch > 5  # so the stop, agreed at the next step, lands mid-epoch
    total = per_epoch + 4  # the run crosses an epoch boundary
    straight = tmp_path / "straight"
    _ok(_train(train_db, straight, loader, "-j", workers, "--max-steps", str(total)))

    interrupted = tmp_path / "interrupted"
    if stop == "signal":
        first = _train(train_db, interrupted, loader, "-j", workers, env=fault_env(sigterm_at_step="3"))
        _ok(first, ExitCode.TERMINATED)  # stopped, saved, not complete
        assert "stopped by a signal" in first.stdout
    else:
        _ok(_train(train_db, interrupted, loader, "-j", workers, "--max-steps", "5"))
    saved = torch.load(next(interrupted.glob("checkpoint-step*.pt")), weights_only=True)
    stopped_at = saved["global_step"]
    assert 3 <= stopped_at < per_epoch and saved["step_in_epoch"] == stopped_at  # mid-epoch, an agreed boundary
    resume = ["--resume", "auto", "-j", workers, "--max-steps", str(total - stopped_at)]
    _ok(_train(train_db, interrupted, loader, *resume))

    assert _key_logs(interrupted) == _key_logs(straight)
    final = _params(straight / f"checkpoint-step{total:09d}.pt")
    resumed = _params(interrupted / f"checkpoint-step{total:09d}.pt")
    for name, value in final.items():
        assert torch.equal(resumed[name], value), f"{name}: max difference {(resumed[name] - value).abs().max()}"
    after_epoch = _params(straight / f"checkpoint-step{per_epoch:09d}.pt")
    assert any(not torch.equal(after_epoch[n], final[n]) for n in final if final[n].is_floating_point())


@pytest.mark.slow
def test_resume_on_another_world_and_batch_trains_each_sample_once(train_db: Path, tmp_path: Path) -> None:
    """2 ranks of batch 4 stopped after 5 steps (40 positions of the epoch's global order), resumed on 1 rank
    with another batch: across both runs every sample of the epoch is trained exactly once, the resume says
    where it is and how the lr was rescaled, and the logged lr follows the schedule by samples seen."""
    from lmdb_dali_train.schedule import lr_schedule

    length, first_steps, first_global = len(open_database(train_db)), 5, 8
    consumed = first_steps * first_global
    batch = whole_epoch_batch(length - consumed, 1)
    assert (length - consumed) % batch == 0 and batch != first_global
    out = tmp_path / "run"
    common = ["--warmup-epochs", "0.25"]
    _ok(_torchrun(*_epoch_args(train_db, out, 4, "torch"), *common, "--max-steps", str(first_steps)))
    resumed = _run(
        [sys.executable, "train.py", *_epoch_args(train_db, out, batch, "torch"), *common]
        + ["--resume", "auto", "--print-freq", "1"]
    )
    _ok(resumed)
    assert f"at sample {consumed} of epoch 0 on 1 ranks x {batch}" in resumed.stdout, resumed.stdout
    assert "lr scaled from" in resumed.stdout, resumed.stdout

    rows = [row for rows in _key_logs(out).values() for row in rows]
    trained_keys = [k for _, _, k in rows]
    database = open_database(train_db)
    assert len(trained_keys) == length and set(trained_keys) == {database.key(i).decode() for i in range(len(database))}

    steps = RankPlan(length, batch).num_batches(0)  # the resumed configuration's epoch: its schedule's length
    schedule = lr_schedule(steps, int(0.25 * steps))  # in steps of the new global batch
    base = 0.1 * batch / 256
    logged = [(e["step"], e["lr"]) for e in _events(out, "train") if e["step"] > first_steps]
    assert [s for s, _ in logged] == list(range(first_steps + 1, first_steps + 1 + (length - consumed) // batch))
    for step, lr in logged:  # the lr for the next step, after (step - 5) steps of the resumed run
        seen = consumed + (step - first_steps) * batch
        assert lr == pytest.approx(base * schedule(seen / batch)), (step, lr)


@pytest.fixture(scope="module")
def trained(train_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after 2 training steps on the generated training database (torch loader)."""
    out = tmp_path_factory.mktemp("trained")
    _ok(_train(train_db, out, "torch", "--max-steps", "2"))
    (path,) = out.glob("checkpoint-step*.pt")
    return path


@pytest.mark.slow
def test_resume_on_another_database_is_refused(trained: Path, val_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy2(trained, out / trained.name)
    args = ["--loader", "torch", "--lmdb", "--train", str(val_db), "-b", "8", "--output-dir", str(out), "-j", "0"]
    args += SMALL
    refused = run_main(train_main, *args, "--resume", "auto", "--max-steps", "1")  # stops before training
    assert_one_line_error(refused, "different dataset", "--force-resume")
    forced = _train(val_db, out, "torch", "--resume", "auto", "--max-steps", "1", "--force-resume")
    _ok(forced)
    assert "different dataset (--force-resume)" in forced.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_without_saving(trained: Path, train_db: Path, tmp_path: Path) -> None:
    """A NaN loss at global step 4 (of a run resumed at step 2, asked for 4 more steps): one line naming the
    step, a non-zero exit, and no checkpoint written after it, so the last good one is still the newest."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy2(trained, out / trained.name)
    proc = _train(train_db, out, "torch", "--resume", "auto", "--max-steps", "4", env=fault_env(nan_loss_at_step="4"))
    assert proc.returncode not in (0, None), (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not finite" in lines[0] and "step 4" in lines[0], lines[0]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [trained.name]


@pytest.mark.slow
def test_evaluate_runs_validation_only(trained: Path, val_db: Path, train_db: Path, tmp_path: Path) -> None:
    """--evaluate --resume CKPT: one val event over every validation image, no training step, no checkpoint;
    the same weights give the same metrics again."""
    before = sorted(trained.parent.iterdir())
    stamp = trained.stat().st_mtime_ns
    metrics = []
    for run in ("first", "second"):
        out = tmp_path / run
        cmd = [sys.executable, "train.py", "--evaluate", "--resume", str(trained), "--loader", "torch", "--lmdb"]
        cmd += ["--train", str(train_db), "--val", str(val_db), "-b", "8", "-j", "0", "--output-dir", str(out)]
        proc = _run(cmd + SMALL)
        _ok(proc)
        (val,) = _events(out, "val")
        assert val["count"] == len(open_database(val_db)) and 0 <= val["top1"] <= 100
        assert _events(out, "train") == [] and not list(out.glob("checkpoint-*"))
        metrics.append({k: val[k] for k in ("loss", "top1", "top5", "count")})
    assert metrics[0] == metrics[1]
    assert sorted(trained.parent.iterdir()) == before and trained.stat().st_mtime_ns == stamp


def test_evaluate_needs_no_training_data(val_db: Path, tmp_path: Path) -> None:
    """--evaluate reads only --val (here: the initial weights, in this process)."""
    out = tmp_path / "o"
    args = ["--evaluate", "--loader", "torch", "--lmdb", "--val", str(val_db), "-b", "8", "-j", "0"]
    result = run_main(train_main, *args, "--output-dir", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    (val,) = _events(out, "val")
    assert val["count"] == len(open_database(val_db))


# -- data-wait ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_data_wait_reads_high_for_a_slow_loader_and_low_for_synthetic(train_db: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow"  # a loader slowed on purpose: 0.4 s before each batch
    _ok(_train(train_db, slow, "torch", "--max-steps", "6", "--print-freq", "3", env=fault_env(loader_delay_s="0.4")))
    waits = [e["data_wait"] for e in _events(slow, "train")]
    (speed,) = _events(slow, "speed")
    # the first window is warm-up (the model's first steps are slow on a busy machine): the steady state reads high
    assert len(waits) == 2 and waits[-1] > 0.5 and speed["data_wait"] > 0.5 and speed["warmup_steps"] == 3, (
        waits,
        speed,
    )
    synthetic = tmp_path / "synthetic"
    _ok(
        _run(
            [
                sys.executable,
                "train.py",
                "--synthetic",
                "-b",
                "8",
                "--max-steps",
                "10",
                "--output-dir",
                str(synthetic),
                *SMALL,
            ]
        )
    )
    waits = [e["data_wait"] for e in _events(synthetic, "train")]
    (speed,) = _events(synthetic, "speed")
    assert len(waits) == 2 and max(waits) < 0.05 and speed["data_wait"] < 0.05, (waits, speed)


def _synthetic(out: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """train.py on synthetic batches of 8 at crop 32 on the CPU (the default --print-freq, 10, unless given)."""
    cmd = [sys.executable, "train.py", "--synthetic", "-b", "8", "-a", "resnet18", "--crop-size", "32"]
    return _run([*cmd, "--device", "cpu", "--output-dir", str(out), *flags], env)


def _figures(record: dict) -> tuple[float, float]:
    rate, wait = record["images_per_s"], record["data_wait"]
    assert rate > 0 and 0 <= wait <= 1, record
    return rate, wait


@pytest.mark.slow
def test_every_stop_logs_its_last_window_and_the_run_after_its_warm_up(tmp_path: Path) -> None:
    """--max-steps inside the first print window, a signal between print points, an error at the stop: each
    logs the figures of its last (partial) window and of the whole run, the warm-up steps named."""
    short = tmp_path / "short"  # 6 steps, printing every 10: the one window is the stop's
    _ok(_synthetic(short, "--max-steps", "6"))
    (window,) = _events(short, "train")
    assert window["step"] == 6 and window["steps"] == 6 and _figures(window)
    (speed,) = _events(short, "speed")
    assert (speed["reason"], speed["steps_run"], speed["warmup_steps"], speed["steps"]) == ("max_steps", 6, 1, "2-6")
    assert speed["images"] == 5 * 8 and _figures(speed) and speed["last_window"]["steps"] == "1-6"

    signalled = tmp_path / "signalled"  # a SIGTERM after step 7, printing every 5: windows 1-5 and 6-7
    terminated = _synthetic(signalled, "--print-freq", "5", "--epochs", "3", env=fault_env(sigterm_at_step="7"))
    _ok(terminated, ExitCode.TERMINATED)
    assert [(e["step"], e["steps"]) for e in _events(signalled, "train")] == [(5, 5), (7, 2)]
    (speed,) = _events(signalled, "speed")
    assert (speed["reason"], speed["steps_run"], speed["warmup_steps"], speed["steps"]) == ("stopped", 7, 5, "6-7")
    assert speed["images"] == 2 * 8 and _figures(speed)
    # the benchmarks read the same record (one warm-up rule), and refuse a run with no window after the first
    assert runlog.steady(signalled / "log.jsonl") == runlog.Steady(speed["images_per_s"], speed["data_wait"], "6-7", 5)
    with pytest.raises(runlog.RunFailed, match="no steady state"):
        runlog.steady(short / "log.jsonl")

    failed = tmp_path / "failed"  # a NaN loss at step 3, found at the stop's window: the run ends in an error
    proc = _synthetic(failed, "--max-steps", "6", env=fault_env(nan_loss_at_step="3"))
    assert proc.returncode == ExitCode.DIVERGED, proc.stderr[-2000:]
    (speed,) = _events(failed, "speed")
    assert (speed["reason"], speed["steps_run"], speed["warmup_steps"]) == ("error", 6, 1)
    assert _figures(speed) and speed["last_window"]["steps"] == "1-6"


# -- flags, paths, configuration (in-process: each stops before training) -----------------------------


def test_bad_flags_and_paths(train_dir: Path, train_db: Path, bad_images: Path, tmp_path: Path) -> None:
    base = ["--device", "cpu", "--output-dir", str(tmp_path / "o"), "--loader", "torch"]

    def fails(*args: str, fragment: str) -> None:
        assert_one_line_error(run_main(train_main, *base, *args), fragment)

    fails("--lmdb", "--train", str(train_dir), fragment="not an LMDB database")
    fails("--train", str(train_db), fragment="add --lmdb")
    fails("--train", str(tmp_path / "missing"), fragment="no such file")
    fails("--train", str(train_dir), fragment="not a usable ImageFolder tree")  # an empty class folder
    fails(fragment="--train is required")
    other = tmp_path / "other.lmdb"
    listing = tmp_path / "l.csv"
    listing.write_text("hopper_gray.jpg,odd\n")
    convert(bad_images, other, "--file-list", str(listing))
    fails("--lmdb", "--train", str(train_db), "--val", str(other), fragment="class maps differ")
    fails("--lmdb", "--train", str(train_db), "--amp", "fp16", fragment="needs CUDA")
    fails("--lmdb", "--train", str(train_db), "--dist-backend", "nccl", fragment="needs CUDA")
    fails("--lmdb", "--train", str(train_db), "-a", "resnet9000", fragment="not a torchvision classification model")
    fails("--lmdb", "--train", str(train_db), "--resume", str(tmp_path / "nope.pt"), fragment="no such checkpoint")
    fails("--lmdb", "--train", str(train_db), "-b", "0", fragment="--batch-size must be positive")
    fails("--lmdb", "--train", str(train_db), "--evaluate", fragment="--evaluate needs --val")
    bad = run_main(train_main, *base, "--loader", "tensorflow")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_missing_dali_is_one_line_naming_the_fix(
    train_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    args = ["--device", "cpu", "--output-dir", str(tmp_path / "o"), "--lmdb", "--train", str(train_db)]
    for loader in ([], ["--loader", "dali"]):  # dali is the default
        assert_one_line_error(run_main(train_main, *args, *loader), "DALI is not installed", "--loader torch")


def test_every_option_is_explained() -> None:
    """Each flag of train.py carries a help text, and --help renders (a stray % in one would break it)."""
    parser = build_parser()
    missing = [
        "/".join(action.option_strings)
        for action in parser._actions
        if action.option_strings and (not action.help or not action.help.strip() or action.help == argparse.SUPPRESS)
    ]
    assert not missing, f"options without a help text: {missing}"
    text = parser.format_help()
    for action in parser._actions:
        assert any(flag in text for flag in action.option_strings)


def test_placement_from_torchrun_slurm_and_nothing() -> None:
    from lmdb_dali_train.distributed import placement_from_env

    torchrun = placement_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank) == (5, 8, 1)
    slurm = placement_from_env({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (3, 4, 1)
    assert placement_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1
    single = placement_from_env({})
    assert (single.rank, single.world_size, single.distributed) == (0, 1, False)
