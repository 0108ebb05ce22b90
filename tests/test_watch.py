"""A run users can watch and the files they keep from it: timestamped console lines with the ETA,
summary.csv, TensorBoard event files, best.pt and weights.pt, --keep-checkpoints, and the curves PNG
(``python -m lmdb_dali_train.plot``).

The pieces are checked in this process on made-up records (no clock is read: the ETA gets its clock readings
as arguments); one short training run with validation (``watched``, marked ``slow``) checks them together.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from conftest import run_cli, run_main
from test_train import SMALL, _events, _ok, _run

from lmdb_dali_train import plot
from lmdb_dali_train.runlog import RunLog
from lmdb_dali_train.watch import COLUMNS, Eta, SummaryCsv
from lmdb_io import open_database

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
ETA = r" \| eta epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d$"
NO_TENSORBOARD = (
    None if importlib.util.find_spec("tensorboard") else "tensorboard is not installed (pip install tensorboard)"
)


# -- console lines ------------------------------------------------------------------------------------


def test_console_lines_start_with_the_time_and_hooks_extend_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = RunLog(str(tmp_path), enabled=True)
    log.hooks.append(lambda kind, fields: fields.update(extra=1) or " [hooked]" if kind == "train" else "")
    log.info("hello")
    log.record("train", "epoch 0 step 1/2", step=1)
    log.record("val", "val epoch 0", epoch=0)
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(f"^{STAMP} ", "", line) for line in lines] == ["hello", "epoch 0 step 1/2 [hooked]", "val epoch 0"]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["event"], r.get("extra")) for r in records] == [("train", 1), ("val", None)]


def test_a_run_without_tensorboard_says_so_once_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmdb_dali_train.main import main as train_main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    out = tmp_path / "run"
    args = ["--synthetic", "--device", "cpu", "-a", "resnet18", "-b", "2", "--crop-size", "32", "--max-steps", "2"]
    result = run_main(train_main, *args, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if "TensorBoard" in line]
    assert len(said) == 1 and "pip install tensorboard" in said[0], result.stdout
    assert not list(out.glob("events.out.tfevents.*")) and "TensorBoard" not in result.stderr


def _window(epoch: int, steps: int, done: int, in_epoch: int = 10) -> dict:
    return {"epoch": epoch, "steps": steps, "step_in_epoch": done, "steps_in_epoch": in_epoch}


def test_eta_from_the_second_window_of_each_epoch_at_the_pace_so_far() -> None:
    eta = Eta(epochs=3, steps_per_epoch=10, max_steps=None)
    eta.epoch_start(0.0)
    assert eta.window(_window(0, 5, 5), 1.0) is None  # the epoch's first window: start-up, no pace yet
    # 5 steps in 1 s: the epoch is done, 2 epochs of 10 steps left; no epoch end measured yet
    assert eta.window(_window(0, 5, 10), 2.0) == pytest.approx((0.0, 4.0))
    eta.epoch_start(3.0)  # validation and checkpoint: 1 s
    assert eta.window(_window(1, 5, 5), 4.0) is None
    # pace 8 steps in 2 s; 2 steps left in the epoch, 10 in the last one, and 2 epoch ends of 1 s
    assert eta.window(_window(1, 3, 8), 5.0) == pytest.approx((0.5, 3.0 + 2.0))


def test_eta_of_the_run_stops_at_max_steps() -> None:
    eta = Eta(epochs=3, steps_per_epoch=10, max_steps=9)
    eta.epoch_start(0.0)
    eta.window(_window(0, 4, 4), 1.0)
    # 8 steps run at 4 a second: 1 left by --max-steps, 2 left in the epoch (which this run will not finish)
    assert eta.window(_window(0, 4, 8), 2.0) == pytest.approx((0.5, 0.25))


# -- summary.csv --------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_rows_are_appended_and_a_redone_epoch_replaces_its_row(tmp_path: Path) -> None:
    summary = SummaryCsv(str(tmp_path))
    for epoch in range(3):
        summary.append({"epoch": epoch, "train_loss": 2.0 - epoch, "val_top1": None, "seconds": 1.5})
    path = tmp_path / "summary.csv"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [(r["epoch"], r["train_loss"], r["val_top1"]) for r in _rows(path)] == [
        ("0", "2.0000", ""),
        ("1", "1.0000", ""),
        ("2", "0.0000", ""),
    ]
    summary.append({"epoch": 1, "train_loss": 0.5})  # a resumed run redoes epochs 1 and 2
    assert [(r["epoch"], r["train_loss"]) for r in _rows(path)] == [("0", "2.0000"), ("1", "0.5000")]
    with open(path, "a") as f:
        f.write("2,0.4")  # a crash in the middle of a row
    summary.append({"epoch": 2, "train_loss": 0.25})
    assert [(r["epoch"], r["train_loss"]) for r in _rows(path)] == [("0", "2.0000"), ("1", "0.5000"), ("2", "0.2500")]
    assert not list(tmp_path.glob("*.tmp-*"))


# -- the plot command ---------------------------------------------------------------------------------


def _write_log(run: Path, events: list[dict]) -> None:
    run.mkdir(exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _train_event(step: int, per_epoch: int = 4, loss: float = 1.0) -> dict:
    epoch, done = divmod(step - 1, per_epoch)
    return {
        "event": "train",
        "epoch": epoch,
        "step": step,
        "step_in_epoch": done + 1,
        "steps_in_epoch": per_epoch,
        "loss": loss,
        "top1": 10.0 * step,
        "top5": 50.0,
        "lr": 0.01 * step,
        "images_per_s": 100.0 + step,
        "data_wait": 0.05,
    }


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)


def test_plot_draws_a_png_from_the_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    start = {"event": "start", "config": {"optim": {"arch": "resnet18", "epochs": 3}}, "steps_per_epoch": 4}
    events = [start, *(_train_event(s) for s in range(1, 9))]
    events.insert(5, {"event": "val", "epoch": 0, "loss": 1.5, "top1": 40.0, "top5": 90.0, "count": 10})
    _write_log(run, [*events, {"event": "val", "epoch": 1, "loss": 1.2, "top1": 50.0, "top5": 95.0, "count": 10}])
    result = run_main(plot.main, str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run / "curves.png")
    _assert_png(run / "curves.png")


def test_plot_draws_the_newest_of_redone_steps(tmp_path: Path) -> None:
    """A resumed run redoes the steps after its checkpoint; a new run in the folder starts over."""
    run = tmp_path / "run"
    first = [_train_event(s, loss=9.0) for s in range(1, 7)]
    resumed = [_train_event(s, loss=1.0) for s in range(5, 9)]
    _write_log(run, [*first, {"event": "start"}, *resumed])
    curves = plot.read_log(str(run))
    assert [(e["step"], e["loss"]) for e in curves.train] == [(s, 9.0) for s in range(1, 5)] + [
        (s, 1.0) for s in range(5, 9)
    ]
    _write_log(run, [*first, {"event": "val", "epoch": 0, "loss": 2.0, "top1": 1.0, "top5": 2.0}, _train_event(1)])
    curves = plot.read_log(str(run))
    assert [e["step"] for e in curves.train] == [1] and curves.val == {}


def test_plot_of_a_folder_without_a_log_is_one_line_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    for folder in (empty, tmp_path / "missing"):
        result = run_main(plot.main, str(folder))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and str(folder) in lines[0], result.stderr
        assert "no log.jsonl" in lines[0] and not (folder / "curves.png").exists()
    _write_log(empty, [{"event": "start"}])
    result = run_main(plot.main, str(empty))
    assert result.returncode == 2 and "no training window" in result.stderr and str(empty) in result.stderr
    help_text = run_main(plot.main, "--help")
    assert help_text.returncode == 0 and "RUN_DIR" in help_text.stdout and "curves.png" in help_text.stdout


# -- one short run with validation --------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched(train_db: Path, val_db: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """3 epochs with validation, printing every 2 steps, keeping 3 checkpoints: (output dir, stdout). The
    run's flags come from a YAML file as a user writes one, with its epochs overridden on the command line."""
    out = tmp_path_factory.mktemp("watched") / "run"
    recipe = out.parent / "recipe.yaml"
    recipe.write_text(
        "data:\n  loader: torch\n  lmdb: true\n  workers: 0\n"
        "optim:\n  epochs: 5\n  batch_size: 8\n  lr: 0.05\n"
        "run:\n  print_freq: 2\n  keep_checkpoints: 3\n"
    )
    cmd = [sys.executable, "train.py", "--config", str(recipe), "--train", str(train_db), "--val", str(val_db)]
    proc = _run([*cmd, *SMALL, "--print-freq", "2", "--epochs", "3", "--output-dir", str(out)])
    _ok(proc)
    return out, proc.stdout


@pytest.mark.slow
def test_the_run_from_a_file_holds_its_configuration_and_everything_to_watch(watched: tuple[Path, str]) -> None:
    """The folder of a run from a YAML file: config.yaml (the file's values, the command line's override),
    summary.csv, best.pt, checkpoints, TensorBoard's events where installed."""
    out, _ = watched
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optim"]["epochs"] == 3 and config["optim"]["batch_size"] == 8 and config["data"]["loader"] == "torch"
    assert config["run"]["keep_checkpoints"] == 3 and config["data"]["workers"] == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "log.jsonl", "summary.csv", "best.pt", "weights.pt"} <= names
    assert list(out.glob("checkpoint-step*.pt"))
    assert NO_TENSORBOARD is not None or list(out.glob("events.out.tfevents.*"))


def _steps_per_epoch(out: Path) -> int:
    (start,) = _events(out, "start")
    return start["steps_per_epoch"]


@pytest.mark.slow
def test_summary_has_a_row_per_epoch_with_its_validation(watched: tuple[Path, str]) -> None:
    out, _ = watched
    rows = _rows(out / "summary.csv")
    vals, trains = _events(out, "val"), _events(out, "train")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] == [v["epoch"] for v in vals]
    for row, val in zip(rows, vals, strict=True):
        assert all(row[c] != "" for c in COLUMNS), row
        assert float(row["val_top1"]) == pytest.approx(val["top1"], abs=1e-3)
        assert float(row["val_loss"]) == pytest.approx(val["loss"], abs=1e-4)
        windows = [t for t in trains if t["epoch"] == val["epoch"]]
        images = sum(t["images"] for t in windows)
        top1 = sum(t["top1"] * t["images"] for t in windows) / images
        assert float(row["train_top1"]) == pytest.approx(top1, abs=1e-3)
        assert float(row["lr"]) == pytest.approx(windows[-1]["lr"], rel=1e-5)
        assert float(row["images_per_s"]) > 0 and 0 <= float(row["data_wait"]) <= 1 and float(row["seconds"]) > 0


@pytest.mark.slow
def test_best_and_final_weights_load_into_the_torchvision_model(watched: tuple[Path, str], train_db: Path) -> None:
    out, _ = watched
    classes = len(open_database(train_db).classes)
    vals = _events(out, "val")
    best_epoch = max(vals, key=lambda v: (v["top1"], -v["epoch"]))["epoch"]  # the first epoch at the best top-1
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch and best["arch"] == "resnet18"
    assert best["metrics"]["top1"] == pytest.approx(max(v["top1"] for v in vals))
    model = torchvision.models.get_model("resnet18", num_classes=classes)
    model.load_state_dict(best["model"])
    final = torch.load(out / "weights.pt", weights_only=True)
    model.load_state_dict(final)  # strict: exactly the torchvision model's keys
    last = torch.load(out / f"checkpoint-step{3 * _steps_per_epoch(out):09d}.pt", weights_only=True)["model"]
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in last)


@pytest.mark.slow
def test_keep_checkpoints_keeps_that_many(watched: tuple[Path, str]) -> None:
    out, _ = watched
    per_epoch = _steps_per_epoch(out)
    names = sorted(p.name for p in out.glob("checkpoint-step*.pt"))
    assert names == [f"checkpoint-step{e * per_epoch:09d}.pt" for e in (1, 2, 3)]  # the default would keep 2


@pytest.mark.slow
def test_console_lines_carry_the_time_and_the_eta_from_the_second_window(watched: tuple[Path, str]) -> None:
    out, stdout = watched
    lines = stdout.splitlines()
    assert lines and all(re.match(f"{STAMP} ", line) for line in lines), [
        line for line in lines if not re.match(STAMP, line)
    ]
    windows = [line for line in lines if re.match(f"{STAMP} epoch \\d+ step ", line)]
    trains = _events(out, "train")
    assert len(windows) == len(trains) and len(trains) >= 6
    for line, record in zip(windows, trains, strict=True):
        first_of_epoch = record["step_in_epoch"] == record["steps"]
        assert (re.search(ETA, line) is None) == first_of_epoch, line
        assert ("eta_run_s" in record) != first_of_epoch, record


@pytest.mark.slow
@pytest.mark.skipif(NO_TENSORBOARD is not None, reason=NO_TENSORBOARD or "")
def test_tensorboard_events_per_window_and_per_epoch(watched: tuple[Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = watched
    events = EventAccumulator(str(out))
    events.Reload()
    trains, vals = _events(out, "train"), _events(out, "val")
    for name in ("loss", "top1", "lr", "images_per_s", "data_wait"):
        scalars = events.Scalars(f"train/{name}")
        assert [s.step for s in scalars] == [t["step"] for t in trains]
        assert [s.value for s in scalars] == pytest.approx([t[name] for t in trains], rel=1e-5)
    per_epoch = _steps_per_epoch(out)
    for name in ("loss", "top1", "top5"):
        scalars = events.Scalars(f"val/{name}")
        assert [s.step for s in scalars] == [(v["epoch"] + 1) * per_epoch for v in vals]
        assert [s.value for s in scalars] == pytest.approx([v[name] for v in vals], rel=1e-5)


@pytest.mark.slow
def test_plot_command_draws_the_run(watched: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(watched[0], out, ignore=shutil.ignore_patterns("*.pt"))
    proc = run_cli("-m", "lmdb_dali_train.plot", str(out))
    assert proc.returncode == 0, proc.stderr
    _assert_png(out / "curves.png")


@pytest.mark.slow
def test_a_resumed_run_replaces_the_rows_it_redoes(
    watched: tuple[Path, str], train_db: Path, val_db: Path, tmp_path: Path
) -> None:
    """--resume auto from the checkpoint after epoch 1 (the newest gone): only step checkpoints are candidates
    (best.pt and weights.pt are not), epoch 2 is redone and summary.csv keeps one row per epoch."""
    out = tmp_path / "run"
    shutil.copytree(watched[0], out)
    per_epoch = _steps_per_epoch(out)
    (out / f"checkpoint-step{3 * per_epoch:09d}.pt").unlink()
    before = _rows(out / "summary.csv")
    cmd = [sys.executable, "train.py", "--loader", "torch", "--lmdb", "--train", str(train_db), "--val", str(val_db)]
    cmd += ["--epochs", "3", "-b", "8", "-j", "0", "--lr", "0.05", "--output-dir", str(out), *SMALL]
    proc = _run([*cmd, "--resume", "auto"])
    _ok(proc)
    assert f"resumed from {out / f'checkpoint-step{2 * per_epoch:09d}.pt'}" in proc.stdout
    rows = _rows(out / "summary.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[:2] == before[:2]
