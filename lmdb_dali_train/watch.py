"""What a user watches while a run trains, and the weights they keep from it (rank 0 writes, every rank calls).

- The ETA, appended to each ``train`` line from the second print window of an epoch on (``Eta``).
- TensorBoard event files in OUTPUT_DIR when the ``tensorboard`` package is installed (one info line when
  it is not): train loss, top-1, lr, images/s and data-wait per print window, val loss, top-1 and top-5
  per epoch, all against the global step.
- ``summary.csv``: one row per completed epoch (``SummaryCsv``, ``COLUMNS``), appended, flushed and
  fsynced as the epoch completes; a resumed run replaces the rows of the epochs it redoes.
- ``best.pt``: the model's weights at the best val top-1 so far, with its epoch and metrics, rewritten
  atomically when a validation improves on it; ``weights.pt``: the plain ``state_dict`` at the end of the
  run (all epochs done), for ``torchvision.models.get_model(arch, num_classes=N).load_state_dict``.

The watch learns the metrics from the run log's records (``RunLog.hooks``): ``train`` windows and ``val``
events, which rank 0 alone logs. The train columns of an epoch's row are over the print windows of the
epoch this process ran (after a mid-epoch resume: the steps after it): loss and top-1 weighted by the
windows' images, which are every rank's (the windows' metrics are all-reduced); images/s is the windows'
images over their seconds (training-loop time, validation left out); data-wait is the share of those
seconds spent waiting for the loader. ``lr`` is the last window's (the rate for the next step), ``seconds``
the wall-clock time from the epoch's start in this process to the end of its validation.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TextIO

import torch
from torch import nn

from . import checkpoint
from .config import ConfigError, RunConfig
from .distributed import Placement, on_main
from .runlog import RunLog, warn

SUMMARY = "summary.csv"
BEST = "best.pt"
WEIGHTS = "weights.pt"
COLUMNS = (
    "epoch",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "images_per_s",
    "data_wait",
    "seconds",
)


def duration(seconds: float) -> str:
    """``0:04:05``, ``1 day, 2:03:04``: an ETA on a console line."""
    return str(timedelta(seconds=round(max(0.0, seconds))))


@dataclass
class Eta:
    """Time left in the epoch and in the run, at the pace measured so far.

    The pace is the steps per second between print windows, from each epoch's first window on (that window
    holds the loader's start and the first steps; validation and checkpoints fall between epochs, outside).
    The epoch's ETA is its remaining steps at that pace. The run's ETA adds the remaining epochs' steps (a
    fresh epoch's ``steps_per_epoch``), capped by ``--max-steps``, plus for each epoch end to come the mean
    time the epoch ends so far took (validation and checkpoint; before the first one, nothing).
    """

    epochs: int
    steps_per_epoch: int
    max_steps: int | None
    steps_run: int = 0  # this process's steps
    _paced_steps: int = 0
    _paced_seconds: float = 0.0
    _windows: int = 0  # in the current epoch
    _last: float | None = None  # clock at the epoch's previous window
    _epoch_done: float | None = None  # clock at the previous epoch's last window
    _ends: list[float] = field(default_factory=list)  # seconds of each epoch end (last window to next start)

    def epoch_start(self, now: float) -> None:
        if self._epoch_done is not None:
            self._ends.append(now - self._epoch_done)
            self._epoch_done = None
        self._windows, self._last = 0, None

    def window(self, fields: dict[str, Any], now: float) -> tuple[float, float] | None:
        """After a ``train`` record: (epoch ETA, run ETA) in seconds, or None in an epoch's first window."""
        steps, done, in_epoch = fields["steps"], fields["step_in_epoch"], fields["steps_in_epoch"]
        self.steps_run += steps
        self._windows += 1
        if self._last is not None:
            self._paced_steps += steps
            self._paced_seconds += now - self._last
        self._last = now
        if done == in_epoch:
            self._epoch_done = now
        if self._windows < 2 or self._paced_steps == 0 or self._paced_seconds <= 0:
            return None
        pace = self._paced_steps / self._paced_seconds
        left_epoch = in_epoch - done
        later = max(0, self.epochs - fields["epoch"] - 1)
        left_run, ends = left_epoch + later * self.steps_per_epoch, later + 1
        if self.max_steps is not None and self.max_steps - self.steps_run < left_run:
            left_run = max(0, self.max_steps - self.steps_run)
            ends = 0 if left_run < left_epoch else 1 + (left_run - left_epoch) // self.steps_per_epoch
        end_time = sum(self._ends) / len(self._ends) if self._ends else 0.0
        return left_epoch / pace, left_run / pace + ends * end_time


@dataclass
class EpochMeans:
    """The sums an epoch's summary row is made of (module docstring)."""

    images: int = 0
    loss: float = 0.0  # summed over images
    top1: float = 0.0
    seconds: float = 0.0
    waited: float = 0.0
    lr: float | None = None

    def add(self, fields: dict[str, Any]) -> None:
        n = fields["images"]
        self.images += n
        self.loss += fields["loss"] * n
        self.top1 += fields["top1"] * n
        self.seconds += fields["seconds"]
        self.waited += fields["data_wait"] * fields["seconds"]
        self.lr = fields["lr"]

    def columns(self) -> dict[str, float | None]:
        n, s = self.images, self.seconds
        return {
            "train_loss": self.loss / n if n else None,
            "train_top1": self.top1 / n if n else None,
            "lr": self.lr,
            "images_per_s": n / s if s > 0 else None,
            "data_wait": min(1.0, self.waited / s) if s > 0 else None,
        }


_FORMATS = {
    "train_loss": "{:.4f}",
    "train_top1": "{:.3f}",
    "val_loss": "{:.4f}",
    "val_top1": "{:.3f}",
    "val_top5": "{:.3f}",
    "lr": "{:.6g}",
    "images_per_s": "{:.1f}",
    "data_wait": "{:.4f}",
    "seconds": "{:.1f}",
}


class SummaryCsv:
    """OUTPUT_DIR/summary.csv: ``COLUMNS``, a row per completed epoch, empty cells for what was not measured.

    Each row is appended, flushed and fsynced. Writing the row of epoch E first drops the rows of epoch E
    and later (a resumed run redoing them, or a new run in the same folder) and a torn last line (a crash
    mid-write), rewriting the file atomically; so every epoch has one row, the newest."""

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, SUMMARY)

    def _read(self) -> str:
        try:
            with open(self.path, encoding="utf-8", newline="") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def rows(self) -> list[dict[str, str]]:
        """The whole rows on file (a torn last line left out)."""
        text = self._read()
        text = text[: text.rfind("\n") + 1]  # up to the last complete line
        return [row for row in csv.DictReader(io.StringIO(text)) if (row.get("epoch") or "").isdigit()]

    def append(self, row: dict[str, Any]) -> None:
        text, rows = self._read(), self.rows()
        kept = [r for r in rows if int(r["epoch"]) < int(row["epoch"])]
        if not text.startswith(_HEADER) or not text.endswith("\n") or len(kept) < text.count("\n") - 1:
            self._rewrite(kept)  # a new file, rows to drop, a torn or foreign line, another header
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            _writer(f).writerow({name: _cell(name, row.get(name)) for name in COLUMNS})
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = _writer(f)
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


_HEADER = ",".join(COLUMNS) + "\n"


def _writer(f: TextIO) -> csv.DictWriter[str]:
    return csv.DictWriter(f, COLUMNS, extrasaction="ignore", restval="", lineterminator="\n")


def _cell(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return _FORMATS[name].format(value) if name in _FORMATS else str(value)


def _summary_writer(output_dir: str, purge_step: int, log: RunLog) -> Any:
    """TensorBoard's SummaryWriter on ``output_dir``, or None (one info line) without the package. A resumed
    run purges the events at and after its first step: the steps it redoes are not drawn twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        log.info("TensorBoard is not installed (pip install tensorboard): no event files in the run folder")
        return None
    return SummaryWriter(output_dir, purge_step=purge_step or None, flush_secs=30)


def plain_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` on the CPU, contiguous: loads into the torchvision model on any device."""
    return {name: value.detach().cpu().contiguous() for name, value in module.state_dict().items()}


class RunWatch:
    """One run's ETA, TensorBoard events, summary.csv, best.pt and weights.pt (module docstring).

    Built on every rank at the start of the epoch loop; only rank 0's (``place.is_main``) writes. Call
    ``epoch_start`` before each epoch's steps, ``epoch_end`` after each completed epoch's validation (a
    collective: every rank), ``finish`` when all epochs are done (a collective), ``close`` on every way out.
    """

    def __init__(
        self,
        config: RunConfig,
        place: Placement,
        log: RunLog,
        *,
        steps_per_epoch: int,
        epoch: int,
        global_step: int,
    ) -> None:
        self.config, self.place, self.log = config, place, log
        self.output_dir = config.output_dir
        self.eta = Eta(config.optim.epochs, steps_per_epoch, config.run.max_steps)
        self.summary = SummaryCsv(self.output_dir)
        self.means: dict[int, EpochMeans] = {}
        self.val: dict[int, dict[str, Any]] = {}
        self.started: dict[int, float] = {}
        self.last_step = global_step
        self.best: tuple[int, float] | None = None  # (epoch, val top-1) of best.pt
        self.writer: Any = None
        if place.is_main:
            self.writer = _summary_writer(self.output_dir, global_step, log)
            if global_step:  # a resumed run keeps the best of the epochs before the one it resumes in
                self.best = _best_on_file(os.path.join(self.output_dir, BEST), epoch)
            log.hooks.append(self.on_record)

    def on_record(self, kind: str, fields: dict[str, Any]) -> str:
        """RunLog's hook (rank 0): the metrics of ``train`` and ``val`` records; the ETA for the line."""
        if kind == "train":
            return self._window(fields)
        if kind == "val" and "epoch" in fields:
            self.val[fields["epoch"]] = dict(fields)
            if self.writer is not None:
                for name in ("loss", "top1", "top5"):
                    self.writer.add_scalar(f"val/{name}", fields[name], self.last_step)
        return ""

    def _window(self, fields: dict[str, Any]) -> str:
        self.last_step = fields["step"]
        self.means.setdefault(fields["epoch"], EpochMeans()).add(fields)
        if self.writer is not None:
            for name in ("loss", "top1", "lr", "images_per_s", "data_wait"):
                self.writer.add_scalar(f"train/{name}", fields[name], fields["step"])
        eta = self.eta.window(fields, time.monotonic())
        if eta is None:
            return ""
        fields["eta_epoch_s"], fields["eta_run_s"] = round(eta[0], 1), round(eta[1], 1)
        return f" | eta epoch {duration(eta[0])}, run {duration(eta[1])}"

    def epoch_start(self, epoch: int) -> None:
        now = time.monotonic()
        self.started.setdefault(epoch, now)
        self.eta.epoch_start(now)

    def epoch_end(self, epoch: int, module: nn.Module, device: torch.device) -> None:
        """``epoch`` completed and validated (or its validation stopped): its summary row and, when its val
        top-1 beats the best so far, best.pt. Every rank calls it; one failing write fails every rank."""
        on_main(self.place.is_main, device, lambda: self._epoch_done(epoch, module), "the run's outputs")

    def finish(self, module: nn.Module, device: torch.device) -> None:
        """All epochs done: the final weights as weights.pt. Every rank calls it."""
        on_main(self.place.is_main, device, lambda: self._write_weights(module), "the run's outputs")

    def _epoch_done(self, epoch: int, module: nn.Module) -> None:
        val = self.val.get(epoch, {})
        row: dict[str, Any] = {"epoch": epoch, **self.means.pop(epoch, EpochMeans()).columns()}
        row |= {f"val_{name}": val.get(name) for name in ("loss", "top1", "top5")}
        started = self.started.pop(epoch, None)
        row["seconds"] = time.monotonic() - started if started is not None else None
        try:
            self.summary.append(row)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.summary.path}: {exc.strerror or exc}") from exc
        if self.writer is not None:
            self.writer.flush()
        top1 = val.get("top1")
        if top1 is None or not math.isfinite(top1) or (self.best is not None and top1 <= self.best[1]):
            return
        was = f" (was {self.best[1]:.2f} at epoch {self.best[0]})" if self.best else ""
        saved = {
            "model": plain_weights(module),
            "arch": self.config.optim.arch,
            "epoch": epoch,
            "global_step": self.last_step,
            "metrics": {name: val[name] for name in ("loss", "top1", "top5", "count") if name in val},
        }
        path = checkpoint.write_file(self.output_dir, BEST, saved)
        self.best = (epoch, top1)
        self.log.record(
            "best", f"best val top1 so far {top1:.2f} at epoch {epoch}{was}: {path}", epoch=epoch, top1=top1
        )

    def _write_weights(self, module: nn.Module) -> None:
        path = checkpoint.write_file(self.output_dir, WEIGHTS, plain_weights(module))
        arch = self.config.optim.arch
        self.log.record(
            "weights",
            f"final weights in {path}: the plain state_dict of torchvision's {arch}",
            path=path,
            arch=arch,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _best_on_file(path: str, before_epoch: int) -> tuple[int, float] | None:
    """(epoch, val top-1) of ``path`` if it is a best.pt of an epoch before ``before_epoch``, else None (a
    warning for one that does not load: the next validation replaces it)."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch, top1 = int(saved["epoch"]), float(saved["metrics"]["top1"])
    except Exception as exc:
        warn(f"{path} does not load ({type(exc).__name__}: {exc}); the next validation replaces it")
        return None
    return (epoch, top1) if epoch < before_epoch else None
