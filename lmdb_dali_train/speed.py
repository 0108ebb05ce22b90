"""Images/s and data-wait of each print window and of the whole run, on clock readings taken after the device
has finished the work queued so far.

The step loop queues GPU work without waiting for it. A clock read while the device is still busy leaves
that work out of the window that queued it (it lands in the next one) and out of the run at its stop: every
reading here synchronises the device first. Readings are taken where the loop needs them anyway (print
points, where the metrics are read back), plus once after the run's first step, once per epoch start and at
a stop: a handful of extra synchronisations per run.

Data-wait is the time spent in ``next(loader)`` over the time of the window. Only the training loop's time
counts: validation and checkpoints between epochs fall in no window.

The warm-up rule (``bench.lib.runlog`` reports the figures this gives): the run's figures leave out its
first print window (start-up, the first batches, cuDNN autotuning, and the batches the loader queued while
nothing consumed them); a run that ends within its first window leaves out its first step only; a run of
one step has its window's figures and no run figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Mark:
    """Counters at one clock reading: steps, images (all ranks), seconds waited for data and seconds of
    training-loop time since the run started, and the global step reached."""

    steps: int
    images: int
    waited: float
    seconds: float
    global_step: int


@dataclass(frozen=True)
class Figures:
    """What happened between two readings."""

    steps: int
    images: int
    seconds: float
    waited: float
    first_step: int  # global step numbers, inclusive
    last_step: int

    @staticmethod
    def between(start: Mark, end: Mark) -> Figures:
        return Figures(
            end.steps - start.steps,
            end.images - start.images,
            end.seconds - start.seconds,
            end.waited - start.waited,
            start.global_step + 1,
            end.global_step,
        )

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait(self) -> float:
        return min(1.0, self.waited / self.seconds) if self.seconds > 0 else 0.0

    def fields(self) -> dict[str, Any]:
        return {
            "steps": f"{self.first_step}-{self.last_step}",
            "images": self.images,
            "seconds": round(self.seconds, 4),
            "images_per_s": self.images_per_s,
            "data_wait": self.data_wait,
        }

    def line(self) -> str:
        steps = f"steps {self.first_step}-{self.last_step}"
        return f"{self.images_per_s:.1f} img/s, data-wait {100 * self.data_wait:.0f}% ({steps})"


class Speedometer:
    """Counts a run's steps, images and waits; ``close_window`` at each print point, ``summary`` at the end.

    The training loop calls ``resume`` when an epoch's loop starts, ``waited`` after each batch it got,
    ``step`` after each optimizer step, ``close_window`` at print points and at a stop, ``pause`` when it
    returns. Images count every rank's: this rank's batch times the world size (every rank runs the same
    steps on equal batches), so no collective is needed, and a crash can still be summarised.
    """

    def __init__(self, device: torch.device, world_size: int = 1) -> None:
        self.device, self.world_size = device, world_size
        self._steps = self._images = self._global_step = 0
        self._waited = 0.0
        self._closed = 0.0  # loop seconds of the stretches (epochs) already paused, up to their last reading
        self._since: float | None = None  # clock at the current stretch's start; None while paused
        self._last: Mark | None = None  # the latest reading
        self._window: Mark | None = None  # where the current print window began
        self._after_first_step: Mark | None = None
        self._after_first_window: Mark | None = None
        self.last_window: Figures | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read(self) -> Mark:
        self._sync()
        assert self._since is not None, "resume() first"
        seconds = self._closed + time.perf_counter() - self._since
        self._last = Mark(self._steps, self._images, self._waited, seconds, self._global_step)
        return self._last

    def resume(self, global_step: int) -> None:
        """An epoch's loop starts: the clock runs (after the device finished what validation queued)."""
        self._sync()
        self._since, self._global_step = time.perf_counter(), global_step
        self._window = Mark(self._steps, self._images, self._waited, self._closed, global_step)

    def waited(self, seconds: float) -> None:
        self._waited += seconds

    def step(self, batch: int, global_step: int) -> None:
        """One optimizer step on this rank's ``batch`` samples, reaching ``global_step``."""
        self._steps += 1
        self._images += batch * self.world_size
        self._global_step = global_step
        if self._steps == 1:
            self._after_first_step = self._read()

    def window_open(self) -> bool:
        """Steps were run since the last window closed."""
        return self._window is not None and self._steps > self._window.steps

    def close_window(self) -> Figures:
        """The current window's figures; the next window starts at this reading."""
        assert self._window is not None, "resume() first"
        now = self._read()
        self.last_window = Figures.between(self._window, now)
        if self._after_first_window is None:
            self._after_first_window = now
        self._window = now
        return self.last_window

    def pause(self) -> None:
        """The loop returns: its time counts up to the last reading (the last window's close)."""
        if self._since is not None and self._last is not None:
            self._closed = self._last.seconds
        self._since = None

    @property
    def steps(self) -> int:
        return self._steps

    def summary(self) -> dict[str, Any]:
        """The run's figures after the warm-up (module docstring), closing a window still open (a crash),
        and the last window's: fields for the log record."""
        if self._since is not None and self.window_open():
            self.close_window()
        end = self._last
        out: dict[str, Any] = {"steps_run": self._steps, "warmup_steps": self._steps, "run": None}
        for mark in (self._after_first_window, self._after_first_step):
            if mark is not None and end is not None and end.steps > mark.steps:
                out |= {"warmup_steps": mark.steps, "run": Figures.between(mark, end)}
                break
        out["last_window"] = self.last_window
        return out
