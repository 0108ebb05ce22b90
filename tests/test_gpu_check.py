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
from pathlib import Path

import pytest
from conftest import FAULTS_DIR, needs_dali

from bench import gpu_check
from bench.lib import gpu
from bench.lib.gpu import child, loader, probe
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
