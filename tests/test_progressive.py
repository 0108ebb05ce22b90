"""Progressive resizing on both loaders (``lmdb_io.reading.resolution``): the training crop follows the schedule
epoch by epoch, without rebuilding the DALI pipeline or restarting the torch loader's persistent workers;
a loader built to resume mid-epoch (as train.py builds it from a checkpoint) crops at that epoch's size;
validation keeps its own size; the flags refuse what cannot be in one line and explain themselves in --help.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_one_line_error, needs_dali, read_spec, repo_pythonpath, run_main

from lmdb_dali_train.main import main as train_main
from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan
from lmdb_io.reading.resolution import ResolutionSchedule

KINDS = [pytest.param("dali", marks=needs_dali), "torch"]
SCHEDULE = ResolutionSchedule(min_res=32, max_res=96, start_ramp=0, end_ramp=2)  # 32, 64, 96, 96, ...
BATCH = 8


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_loader(kind: str, path: Path, workers: int, **kw):
    spec, options = read_spec(path, BATCH, **kw)
    if kind == "torch":
        from lmdb_dali_train.loaders.torch_loader import make_torch_loader

        return make_torch_loader(spec, workers=workers, **options)
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    return make_dali_loader(spec, py_workers=workers, dali_threads=1, **options)


def epoch_sizes(loader) -> tuple[set[tuple[int, ...]], list[int], int]:
    """(image shapes, indices, batches) of one epoch."""
    shapes, indices, batches = set(), [], 0
    for batch in loader:
        shapes.add(tuple(batch.images.shape))
        indices += batch.indices.tolist()
        batches += 1
    return shapes, indices, batches


@pytest.mark.parametrize("kind", KINDS)
def test_each_epoch_crops_at_the_scheduled_size(train_db: Path, kind: str) -> None:
    """Epochs 0, 1, 2 and 3 at 32, 64, 96 and 96 px from one loader; the batch size and the plan stay."""
    n = len(open_database(train_db))
    loader = make_loader(kind, train_db, 0, train=True, seed=2, crop=224, resolution=SCHEDULE)
    pipeline = getattr(loader, "pipeline", None)  # DALI's: built once, the size comes with each sample
    for epoch in range(4):
        size = SCHEDULE.for_epoch(epoch)
        announced = len(loader)
        shapes, indices, batches = epoch_sizes(loader)
        assert shapes == {(BATCH, 3, size, size)}, (epoch, shapes)
        assert batches == announced == RankPlan(n, BATCH).num_batches(epoch)
        assert indices == RankPlan(n, BATCH, seed=2).for_epoch(epoch).indices.tolist()
    assert [SCHEDULE.for_epoch(e) for e in range(4)] == [32, 64, 96, 96]
    assert getattr(loader, "pipeline", None) is pipeline


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_on_the_gpu_each_epoch_crops_at_the_scheduled_size(train_db: Path, kind: str) -> None:
    """On CUDA (DALI: mixed decoding, the GPU resize taking the CPU source's sizes as argument inputs)."""
    device = torch.device("cuda", 0)
    loader = make_loader(kind, train_db, 2, train=True, crop=224, resolution=SCHEDULE, device=device)
    try:
        for epoch in range(3):
            size = SCHEDULE.for_epoch(epoch)
            shapes = set()
            for batch in loader:
                assert batch.images.device == device
                shapes.add(tuple(batch.images.shape))
            assert shapes == {(BATCH, 3, size, size)}, (epoch, shapes)
    finally:
        loader.close()


@pytest.mark.parametrize("kind, workers", [pytest.param("dali", 1, marks=needs_dali), ("torch", 2)])
def test_resuming_mid_schedule_lands_on_the_epochs_size(train_db: Path, kind: str, workers: int) -> None:
    """Built as train.py builds it from a checkpoint taken 2 steps into epoch 1 (first_epoch=1,
    skip=2 x batch): the rest of epoch 1 at its 64 px, then epoch 2 at 96 px, in the plan's order (the
    DALI source in a worker process, the torch loader's persistent workers told the epoch per sample)."""
    n, skip = len(open_database(train_db)), 2 * BATCH
    loader = make_loader(
        kind, train_db, workers, train=True, seed=2, crop=224, resolution=SCHEDULE, first_epoch=1, skip=skip
    )
    resumed = RankPlan(n, BATCH, seed=2, first_epoch=1, skip=skip)
    try:
        shapes, indices, _ = epoch_sizes(loader)
        assert shapes == {(BATCH, 3, 64, 64)}
        assert indices == resumed.for_epoch(1).indices.tolist()
        assert indices == RankPlan(n, BATCH, seed=2).for_epoch(1).indices.tolist()[skip:]
        shapes, indices, _ = epoch_sizes(loader)
        assert shapes == {(BATCH, 3, 96, 96)} and indices == resumed.for_epoch(2).indices.tolist()
    finally:
        loader.close()


@pytest.mark.parametrize("kind", KINDS)
def test_validation_keeps_its_own_size(val_db: Path, kind: str) -> None:
    """A schedule is for training: a validation loader refuses one, and crops its preset's size."""
    with pytest.raises(ValueError, match="for training"):
        make_loader(kind, val_db, 0, train=False, crop=32, val_resize=40, resolution=SCHEDULE)
    shapes, _, _ = epoch_sizes(make_loader(kind, val_db, 0, train=False, crop=32, val_resize=40))
    assert shapes == {(BATCH, 3, 32, 32)}


# -- train.py's flags ---------------------------------------------------------------------------------


def test_flags_are_checked_in_one_line(train_db: Path, train_dir: Path, tmp_path: Path) -> None:
    base = ["--device", "cpu", "--output-dir", str(tmp_path / "o"), "--loader", "torch", "--lmdb"]
    base += ["--train", str(train_db)]

    def fails(*args: str, fragment: str) -> None:
        assert_one_line_error(run_main(train_main, *base, *args), fragment)

    fails("--min-res", "160", fragment="--start-ramp and --end-ramp")
    fails("--min-res", "160", "--start-ramp", "3", fragment="--start-ramp and --end-ramp")
    fails("--min-res", "256", "--start-ramp", "1", "--end-ramp", "3", fragment="0 < min_res <= max_res")
    fails("--min-res", "100", "--start-ramp", "1", "--end-ramp", "3", fragment="multiples of 32")
    fails("--min-res", "160", "--start-ramp", "4", "--end-ramp", "3", fragment="0 <= start_ramp <= end_ramp")
    fails("--min-res", "160", "--start-ramp", "-1", "--end-ramp", "3", fragment="0 <= start_ramp <= end_ramp")
    fails("--min-res", "0", "--start-ramp", "1", "--end-ramp", "3", fragment="0 < min_res <= max_res, not 0, 224")
    fails("--max-res", "-32", "--start-ramp", "1", "--end-ramp", "3", fragment="0 < min_res <= max_res, not 224, -32")
    fails("--min-res", "0", "--max-res", "0", fragment="0 < min_res <= max_res, not 0, 0")
    fails("--start-ramp", "2", "--end-ramp", "5", fragment="need --min-res and --max-res to differ")
    ramp = ["--min-res", "160", "--max-res", "192", "--start-ramp", "1", "--end-ramp", "3"]
    fails("--synthetic", *ramp, fragment="--synthetic")
    folder = ["--device", "cpu", "--output-dir", str(tmp_path / "o"), "--loader", "dali", "--train", str(train_dir)]
    assert_one_line_error(run_main(train_main, *folder, *ramp), "need --lmdb")


def test_flags_are_in_help() -> None:
    text = " ".join(run_main(train_main, "--help").stdout.split())
    for flag in ("--min-res", "--max-res", "--start-ramp", "--end-ramp"):
        assert f"{flag} PX" in text or f"{flag} EPOCH" in text, flag
    assert "multiple of 32" in text and "validation keeps" in text  # argparse may break --crop-size at its hyphen


# -- train.py --------------------------------------------------------------------------------------


def _train(db: Path, val: Path, out: Path, loader: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "train.py", "--loader", loader, "--lmdb", "--train", str(db), "--val", str(val)]
    cmd += ["--epochs", "3", "-b", str(BATCH), "--output-dir", str(out), "-j", "0", "-a", "resnet18"]
    cmd += ["--crop-size", "32", "--val-resize", "36", "--device", "cpu", "--print-freq", "2"]
    cmd += ["--min-res", "32", "--max-res", "96", "--start-ramp", "0", "--end-ramp", "2", *extra]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)


def _events(out: Path, kind: str) -> list[dict]:
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == kind]


@pytest.mark.slow
@pytest.mark.parametrize("loader", KINDS)
def test_train_stops_mid_schedule_and_resumes_at_the_epochs_size(
    train_db: Path, val_db: Path, tmp_path: Path, loader: str
) -> None:
    """Stopped 2 steps into epoch 1 (64 px), resumed: epoch 1 goes on at 64 px and epoch 2 runs at 96 px,
    validation at --crop-size after each epoch."""
    per_epoch = RankPlan(len(open_database(train_db)), BATCH).num_batches(0)
    first = _train(train_db, val_db, tmp_path, loader, "--max-steps", str(per_epoch + 2))
    assert first.returncode == 0, f"{first.stdout[-2000:]}\n{first.stderr[-3000:]}"
    second = _train(train_db, val_db, tmp_path, loader, "--resume", "auto")
    assert second.returncode == 0, f"{second.stdout[-2000:]}\n{second.stderr[-3000:]}"
    sizes = [(e["epoch"], e["size"]) for e in _events(tmp_path, "resolution")]
    assert sizes == [(0, 32), (1, 64), (1, 64), (2, 96)]  # the resumed run re-enters epoch 1 at its size
    assert "resumed from" in second.stdout and "all epochs done" in second.stdout
    assert [e["epoch"] for e in _events(tmp_path, "val")] == [0, 1, 2]
    assert max(e["step"] for e in _events(tmp_path, "train")) == 3 * per_epoch
