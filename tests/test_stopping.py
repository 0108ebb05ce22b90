"""Stopping a run: whoever gets SIGTERM (one rank, a process group with the loader workers in it, or
torchrun, which forwards it to every rank's group), every rank stops at the same step, the run saves
once and every rank exits 0, also in epochs shorter than a few steps and during validation.

Each signal is sent from the test side (``tests/faults/sitecustomize.py``) at a known step or validation
batch. Runs under torchrun go through a ``sh`` wrapper that writes each rank's exit status to a file
(torchrun, signalled itself, reports none): the wrapper traps the signal only to outlive its rank.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, fault_env, needs_dali
from test_train import SMALL, _env, _events

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan
from lmdb_io.reading.spec import ReadSpec
from lmdb_io.reading.workers import ignore_stop_signals, stop_signals_blocked

RUN_TIMEOUT = 150  # a run that does not end by then is stuck (they take well under a minute)
# the loaders with their worker processes: the torch loader's default -j, DALI's Python workers
WITH_WORKERS = [pytest.param("dali", ["-j", "2"], marks=needs_dali, id="dali"), pytest.param("torch", [], id="torch")]
# the sh wrapper: outlives its rank (a trap, so the rank does not inherit an ignored signal), gives the
# fault torchrun's process id (its parent), and records the rank's exit status
WRAPPER = 'trap : INT TERM; FAULT_TORCHRUN_PID=$PPID "$@"; echo $? > "$STOP_TEST_EXITS/rank$RANK"'


def _args(db: Path, out: Path, loader: str, batch: int, *extra: str) -> list[str]:
    cmd = ["--loader", loader, "--lmdb", "--train", str(db), "--epochs", "3", "-b", str(batch)]
    return [*cmd, "--output-dir", str(out), "--lr", "0.05", *SMALL, *extra]


def _communicate(proc: subprocess.Popen[str], on_timeout: signal.Signals) -> tuple[str, str]:
    """The output of ``proc``, a session leader; one that hangs gets ``on_timeout`` (then SIGKILL), and fails."""
    try:
        return proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, on_timeout)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"the run was still going {RUN_TIMEOUT} s after it started\n{out[-2000:]}\n{err[-3000:]}")


def _group_is_gone(pgid: int) -> bool:
    """True once no process is left in process group ``pgid`` (waits up to 30 s for stragglers to exit)."""
    for _ in range(300):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _single(args: list[str], **faults: str) -> subprocess.CompletedProcess[str]:
    """train.py alone, leading its own process group (its loader workers join it)."""
    env = _env(**fault_env(**faults), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "train.py", *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    out, err = _communicate(proc, signal.SIGKILL)
    assert _group_is_gone(proc.pid), "processes of the run (loader workers?) outlived it"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun(args: list[str], tmp_path: Path, nproc: int = 2, **faults: str) -> tuple[dict[int, int], str]:
    """torchrun with ``nproc`` ranks, each through the wrapper: ({rank: exit status}, all output)."""
    exits = tmp_path / "exits"
    exits.mkdir()
    env = _env(**fault_env(**faults), OMP_NUM_THREADS="1", STOP_TEST_EXITS=str(exits))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["--no-python", "sh", "-c", WRAPPER, "sh", sys.executable, "train.py", *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    out, err = _communicate(proc, signal.SIGTERM)  # torchrun passes it on, and kills what is left after 30 s
    statuses = {int(p.name.removeprefix("rank")): int(p.read_text()) for p in exits.iterdir()}
    return statuses, out + err


def _checkpoints(out: Path) -> list[dict]:
    return [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(out.glob("checkpoint-step*.pt"))]


def _assert_stopped(out: Path, output: str) -> dict:
    """The run ended "stopped by a signal" with exactly one checkpoint, at the step the end event names."""
    (end,) = _events(out, "end")
    assert end["reason"] == "stopped", output[-3000:]
    assert "stopped by a signal" in output
    (saved,) = _checkpoints(out)
    assert saved["global_step"] == end["global_step"]
    assert output.count("saved ") == 1
    return saved


# -- the host-side gloo group honours --dist-timeout (issue 19) -----------------------------------------

SIDE_GROUP_TIMEOUT = 2.0  # seconds: the side group's, far below the main group's and torch's 30 minutes


def _side_group_rank(rank: int, store: str, results: Any, release: Any) -> None:
    """One of two gloo ranks whose run "uses NCCL" (``get_backend`` says so), so ``StopSignal`` makes its own
    gloo side group; rank 1 then never joins the stop's collective, rank 0 asks and must fail in time."""
    import torch.distributed as dist

    from lmdb_dali_train.engine import StopSignal

    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(minutes=5)
    )
    dist.get_backend = lambda group=None: "nccl"  # type: ignore[assignment]  # the side group is made as under NCCL
    stop = StopSignal(SIDE_GROUP_TIMEOUT)
    stop.host_group()  # a collective: both ranks make it
    if rank == 1:
        release.wait(120)
        os._exit(0)
    start = time.monotonic()
    try:
        stop.agreed()
        outcome = "returned"
    except Exception as exc:  # gloo's timeout
        outcome = type(exc).__name__
    results.put((outcome, time.monotonic() - start))
    results.close()
    results.join_thread()  # sent before the exit below (which skips the queue's own flush)
    os._exit(0)


@pytest.mark.slow  # two spawned torch processes: ~15 s
def test_the_side_group_times_out_at_dist_timeout(tmp_path: Path) -> None:
    """Rank 0 waits on a rank that never joins the stop's all-reduce: it fails within the side group's
    timeout (``--dist-timeout``), not after torch's default 30 minutes for a group made without one."""
    spawn = multiprocessing.get_context("spawn")
    results, release = spawn.Queue(), spawn.Event()
    procs = [
        spawn.Process(target=_side_group_rank, args=(r, str(tmp_path / "store"), results, release), daemon=True)
        for r in (0, 1)
    ]
    for proc in procs:
        proc.start()
    try:
        outcome, waited = results.get(timeout=120)
    finally:
        release.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    assert outcome != "returned", "the all-reduce returned without its peer"
    assert waited < SIDE_GROUP_TIMEOUT + 8, f"failed after {waited:.1f} s, not at the {SIDE_GROUP_TIMEOUT} s timeout"


# -- loader workers ------------------------------------------------------------------------------------


def _worker(ready: multiprocessing.synchronize.Event, go: multiprocessing.synchronize.Event) -> None:
    ignore_stop_signals()
    ready.set()
    go.wait(60)


def test_a_loader_worker_drops_signals_from_others_and_obeys_its_parent() -> None:
    fork = multiprocessing.get_context("fork")
    ready, go = fork.Event(), fork.Event()
    with stop_signals_blocked():  # as the loaders start their workers
        worker = fork.Process(target=_worker, args=(ready, go), daemon=True)
        worker.start()
    assert ready.wait(60)
    for name in ("INT", "TERM"):  # from another process, as torchrun, SLURM or a terminal send them
        subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
    go.set()
    worker.join(60)
    assert worker.exitcode == 0

    worker = fork.Process(target=_worker, args=(ready, fork.Event()), daemon=True)
    ready.clear()
    worker.start()
    assert ready.wait(60)
    worker.terminate()  # the loader shutting its worker down: SIGTERM from the parent
    worker.join(60)
    assert worker.exitcode == 128 + signal.SIGTERM


@pytest.mark.parametrize("loader", [pytest.param("dali", marks=needs_dali), "torch"])
def test_closing_a_loader_mid_epoch_ends_its_worker_processes(train_db: Path, loader: str) -> None:
    before = set(multiprocessing.active_children())
    spec = ReadSpec(path=train_db, batch_size=8, train=True, crop=32)
    if loader == "dali":
        from lmdb_dali_train.loaders.dali_loader import make_dali_loader

        made = make_dali_loader(spec, py_workers=2, dali_threads=1)
    else:
        from lmdb_dali_train.loaders.torch_loader import make_torch_loader

        made = make_torch_loader(spec, workers=2)
    batches = iter(made)
    next(batches)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    made.close()
    made.close()  # a second close does nothing
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]  # asked to exit, not terminated


# -- a signal to the whole process group, loader workers included ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("loader", "workers"), WITH_WORKERS)
def test_group_signal_stops_a_run_with_loader_workers(
    train_db: Path, tmp_path: Path, loader: str, workers: list[str]
) -> None:
    # a terminal's Ctrl-C or SLURM: the trainer and its loader workers all get the signal
    out = tmp_path / "run"
    proc = _single(_args(train_db, out, loader, 8, *workers), signal_at_step="0:3:group")
    assert proc.returncode == ExitCode.TERMINATED, (
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    saved = _assert_stopped(out, proc.stdout + proc.stderr)
    per_epoch = RankPlan(len(open_database(train_db)), 8).num_batches(0)
    assert 3 <= saved["global_step"] == saved["step_in_epoch"] < per_epoch


@pytest.mark.slow
@pytest.mark.parametrize(("loader", "workers"), WITH_WORKERS)
def test_signal_to_torchrun_stops_every_rank(train_db: Path, tmp_path: Path, loader: str, workers: list[str]) -> None:
    # torchrun forwards SIGTERM to each rank's process group (the rank and its loader workers), then
    # kills what is left 30 s later
    out = tmp_path / "run"
    per_epoch = RankPlan(len(open_database(train_db)), 8, world_size=2).num_batches(0)
    statuses, output = _torchrun(_args(train_db, out, loader, 8, *workers), tmp_path, signal_at_step="0:3:torchrun")
    assert statuses == {0: ExitCode.TERMINATED, 1: ExitCode.TERMINATED}, output[-5000:]
    saved = _assert_stopped(out, output)
    assert 3 <= saved["global_step"] <= per_epoch and saved["epoch"] == saved["global_step"] // per_epoch


# -- when the stop is agreed --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stop_in_an_epoch_of_few_steps_is_agreed_at_once(val_db: Path, tmp_path: Path) -> None:
    # 4 steps per epoch on each of 2 ranks; rank 1 alone is signalled after step 2: both stop there
    out = tmp_path / "run"
    per_epoch = RankPlan(len(open_database(val_db)), 5, world_size=2).num_batches(0)
    assert 2 < per_epoch < 5
    statuses, output = _torchrun(_args(val_db, out, "torch", 5, "-j", "0"), tmp_path, signal_at_step="1:2:self")
    assert statuses == {0: ExitCode.TERMINATED, 1: ExitCode.TERMINATED}, output[-5000:]
    saved = _assert_stopped(out, output)
    assert saved["global_step"] == saved["step_in_epoch"] == 2


@pytest.mark.slow
def test_a_stop_during_validation_ends_it_and_saves(train_db: Path, val_db: Path, tmp_path: Path) -> None:
    # rank 1 alone is signalled after its second validation batch of the first epoch: validation ends
    # there on both ranks (no metrics of a part), the run saves the completed epoch and exits
    out = tmp_path / "run"
    per_epoch = RankPlan(len(open_database(train_db)), 8, world_size=2).num_batches(0)
    val_batches = RankPlan(len(open_database(val_db)), 8, world_size=2, drop_last=False).num_batches(0)
    assert val_batches > 2
    args = _args(train_db, out, "torch", 8, "-j", "0", "--val", str(val_db))
    statuses, output = _torchrun(args, tmp_path, signal_in_val="1:2:self")
    assert statuses == {0: ExitCode.TERMINATED, 1: ExitCode.TERMINATED}, output[-5000:]
    saved = _assert_stopped(out, output)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 0, per_epoch)
    assert _events(out, "val") == []  # interrupted: no metrics over part of the validation set
    assert max(e["step"] for e in _events(out, "train")) == per_epoch
