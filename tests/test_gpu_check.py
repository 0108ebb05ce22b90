"""``python -m bench.gpu_check`` on the CPU: what keeps its figures honest when a GPU runs it.

A row that hangs is killed with its process and costs only its row; the loader rows run in processes of
their own (the parent never touches CUDA), whose DALI source workers never import torch; the torchvision
row's warm-up outlasts the batches its workers finish ahead; a /dev/shm too small for those workers is
named. The whole check's dry run (``--cpu``) is run by hand: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import FAULTS_DIR, needs_dali

from bench import gpu_check
from bench.lib import gpu, runlog
from bench.lib.gpu import child, loader, probe, report, tier
from bench.lib.table import Row
from lmdb_io import open_database


def cpu_args(*flags: str) -> argparse.Namespace:
    return gpu_check.parse_args(["--cpu", "--batch", "8", "--crop", "32", "--torch-workers", "2", *flags])


def with_faults(monkeypatch: pytest.MonkeyPatch, **faults: str) -> None:
    """The row processes ``in_child`` starts inherit this environment (PYTHONPATH after the repo)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(FAULTS_DIR), os.environ.get("PYTHONPATH")) if p))
    for name, value in faults.items():
        monkeypatch.setenv(f"FAULT_{name.upper()}", value)


@pytest.mark.slow  # a row process left to hang until its timeout
def test_a_hung_row_is_killed_and_costs_only_its_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_faults(monkeypatch, gpu_row_hangs="1")
    with pytest.raises(gpu.RowTimedOut, match="timed out after 3 s"):
        child.in_child({"kind": "probe"}, timeout=3)

    def hung(left: float) -> dict:
        raise gpu.RowTimedOut("timed out after 3 s (--row-budget)")

    row = gpu.Check("loader", "dali-w4-hw1", Row("DALI", "how"), (), 0.0, hung)
    gpu.run_check(row, {}, deadline=float("inf"), budget=600)
    assert (row.status, row.row.result) == ("not run", "not run: timed out after 3 s (--row-budget)")


def test_torchvision_row_warms_up_past_what_its_workers_hold() -> None:
    args = cpu_args("--torch-workers", "16", "--warmup-batches", "5")
    assert loader.torch_warmup(args) == 16 * 2 + 1
    assert loader.torch_warmup(cpu_args("--torch-workers", "1", "--warmup-batches", "5")) == 5


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this machine")
def test_a_dev_shm_too_small_for_the_torchvision_workers_is_named(train_db: Path, tmp_path: Path) -> None:
    d = probe.Data(tmp_path, train_db, len(open_database(train_db)))
    assert probe.shm_note(cpu_args("--torch-workers", "1"), d) == ""  # 2 batches of 8 small images fit
    workers = shutil.disk_usage("/dev/shm").free // (2 * 8 * 3 * 32 * 32) + 1  # more than fit even as uint8
    note = probe.shm_note(cpu_args("--torch-workers", str(workers)), d)
    assert note.startswith("/dev/shm has") and f"{workers} workers" in note and "--shm-size" in note, note


@pytest.mark.slow
@needs_dali
def test_loader_rows_run_in_their_own_process_without_torch_in_dali_workers(
    train_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    witness = tmp_path / "imports"
    witness.mkdir()
    with_faults(monkeypatch, spawned_imports=str(witness))
    d = probe.Data(tmp_path, train_db, len(open_database(train_db)))
    found = loader.loader_in_child(cpu_args("--warmup-batches", "2"), d, "dali-w1-hw0.65", left=300)
    assert found["rate"] > 0 and found["warmup_batches"] == 2, found
    assert list(witness.glob("source-*")), "the row's DALI source worker did not start"
    assert not list(witness.glob("torch-*")), "a DALI source worker of the row imported torch"
    random_row = loader.loader_in_child(cpu_args("--warmup-batches", "2"), d, "random-w1-hw0.65", left=300)
    assert random_row["rate"] > 0, random_row  # the decoder's random crop, against which ROI decoding is timed
    torch_row = loader.loader_in_child(cpu_args("--warmup-batches", "2"), d, "torch", left=300)
    assert torch_row["rate"] > 0 and torch_row["warmup_batches"] == 2 * 2 + 1, torch_row


HANGING_TIER = """
import subprocess, sys, time, pytest

@pytest.mark.gpu
def test_starts_a_session_and_hangs():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open({pidfile!r}, "w").write(str(proc.pid))
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow  # a tier left to hang until its budget
def test_a_timed_out_tier_leaves_no_process_of_its_own_sessions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The tier's train.py runs start sessions of their own (``run_in_session``): killing pytest's process group
    left them holding the GPU while the rows after the tier were measured; now the whole tree goes."""
    pidfile = tmp_path / "grandchild.pid"
    tier_file = tmp_path / "test_hanging_tier.py"
    tier_file.write_text(HANGING_TIER.format(pidfile=str(pidfile)))
    monkeypatch.setattr(tier, "GPU_TESTS", str(tier_file))
    with pytest.raises(gpu.RowFailed, match="timed out after 10 s"):
        tier.run_gpu_tests(cpu_args("--tests-budget", "10", "--out", str(tmp_path / "out")), tmp_path, left=60)
    assert pidfile.is_file(), "the hanging test never started its session"
    pid = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the tier's grandchild in a session of its own outlived the tier's timeout")


def test_a_row_cut_short_by_the_budget_is_not_run_and_a_hung_one_failed() -> None:
    """A training row started with little of --budget left and killed at its end is "not run: budget"; one
    killed at its own cap (half the budget) with time to spare hung, and failed."""

    def timed_out(left: float) -> dict:
        raise runlog.RunFailed(f"timed out after {left:.0f} s")

    late = gpu.Check("train", "resnet50-dali", Row("training", "how"), (), 25.0, timed_out)
    gpu.run_check(late, {}, deadline=time.monotonic() + 40, budget=540)
    assert late.status == "not run" and late.row.result.startswith("not run: budget ("), late.row.result
    hung = gpu.Check("train", "resnet50-dali", Row("training", "how"), (), 25.0, timed_out)
    gpu.run_check(hung, {}, deadline=time.monotonic() + 500, budget=540)
    assert hung.status == "failed" and hung.row.result == "failed: timed out after 270 s", hung.row.result


def test_the_lmdb_cost_row_compares_like_with_like() -> None:
    """LMDB against memory with the source in the pipeline's thread on both sides, not the best worker count."""
    rates = {"dali-w0-hw0.65": 900.0, "dali-w4-hw0.65": 2000.0, "memory-hw0.65": 990.0, "dali-w0-hw1": 800.0}
    checks = [gpu.Check("loader", k, Row(k, "", rate=r), (), 0.0, dict) for k, r in rates.items()]
    cost = gpu.Check("derived", "cost", Row("cost", ""), (), 0.0, dict)
    report.set_ratios([*checks, cost])
    assert cost.row.result == "900 vs 990 (`dali-w0-hw0.65` vs `memory-hw0.65`)", cost.row.result
    assert cost.row.ratio == "+10.0 %", cost.row.ratio


def test_dev_shm_warning_counts_dalis_source_workers(
    train_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = probe.Data(tmp_path, train_db, len(open_database(train_db)))
    args = cpu_args("--py-workers", "0,8")
    args.torch_workers = 0  # no torchvision workers: what is named is DALI's
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(probe.shutil, "disk_usage", lambda path: usage._replace(free=1))
    note = probe.shm_note(args, d)
    assert note.startswith("/dev/shm has") and "DALI's 8 source workers x 2 batches" in note, note


def test_the_8_rank_rows_use_train_pys_defaults_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank of 8 on 16 cores: the rows' threads and the second load are what train.py would choose."""
    from lmdb_dali_train import data

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    assert loader.RANK8_THREADS == data.default_threads(8) == 2
    assert loader.RANK8_LOADS == (0.65, data.default_hw_decoder_load(data.cores_per_rank(8)))
    keys = [c.key for c in loader.rows(cpu_args(), probe.Data(Path(".")))]
    assert {"rank8-hw0.65", "rank8-hw0.91"} <= set(keys), keys


def test_the_demos_loader_rows_sync_before_each_clock_read_and_normalise_on_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bench.demo``'s loader-only rows with a GPU faked: the clock starts and stops after a device sync, and
    the torchvision loader is asked for batches on the GPU (where DALI's are), normalised there."""
    import torch

    from bench import demo

    calls: list[str] = []
    asked: dict[str, dict] = {}

    def fake_loader(kind: str, db: Path, batch: int, crop: int, **options: object) -> object:
        asked[kind] = options
        return lambda seed: [argparse.Namespace(images=torch.zeros(batch, 3, 1, 1))] * 3

    def clock() -> float:
        calls.append("clock")
        return float(len(calls))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))
    monkeypatch.setattr(demo.ours, "loader", fake_loader)
    monkeypatch.setattr(demo.time, "perf_counter", clock)
    for kind in ("dali", "torch"):
        calls.clear()
        assert demo.loader_only(kind, Path("db"), 4, 8) > 0
        assert calls == ["sync", "clock", "sync", "clock"], calls
    assert asked["torch"]["device"] == torch.device("cuda") and asked["dali"]["device_id"] == 0, asked
