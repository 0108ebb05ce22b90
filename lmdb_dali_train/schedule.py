"""The learning-rate schedule: linear warm-up, then cosine decay (or FFCV's triangular one), counted in
samples seen so that a run resumed on another global batch continues where its data is."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("cosine", "triangular")  # --lr-schedule's choices; the first is the default
TRIANGULAR_START = 1e-4  # the triangular schedule's first factor: FFCV's get_cyclic_lr starts at 1e-4 x lr


def lr_schedule(total_steps: float, warmup_steps: float, kind: str = "cosine") -> Callable[[float], float]:
    """A multiplier of the base learning rate by step. ``cosine``: linear warm-up from 0, then cosine decay
    to 0. ``triangular`` (FFCV's ``get_cyclic_lr``, interpolated per step as its training loop does): linear
    from ``TRIANGULAR_START`` at step 0 to 1 at ``warmup_steps``, then linear down to 0 at ``total_steps``.

    ``step`` counts optimizer steps of one global batch; ``SamplesLR`` calls it with samples seen over the
    current global batch (a fraction after a resume on another one)."""
    if kind == "triangular":
        return _triangular(total_steps, warmup_steps)
    if kind != "cosine":
        raise ValueError(f"unknown learning-rate schedule {kind!r}: one of {', '.join(SCHEDULES)}")

    def factor(step: float) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _triangular(total_steps: float, peak_steps: float) -> Callable[[float], float]:
    def factor(step: float) -> float:
        if step < peak_steps:
            return TRIANGULAR_START + (1.0 - TRIANGULAR_START) * step / peak_steps
        if step >= total_steps:
            return 0.0
        return (total_steps - step) / (total_steps - peak_steps)

    return factor


class SamplesLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr_schedule`` by samples seen, not optimizer steps: each ``step()`` adds one global batch.

    Lengths are in samples (``total_samples``, ``warmup_samples``); the factor for the next step is
    ``lr_schedule(total / G, warmup / G, kind)(seen / G)`` for the global batch ``G``, which on a run that keeps its
    batch is the step schedule exactly. A resume on another global batch (``resume_at``) keeps the samples
    seen, so the schedule continues where the data is, and the base lr is the one scaled to the new batch.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_samples: int,
        warmup_samples: int,
        global_batch: int,
        kind: str = "cosine",
    ) -> None:
        self.total_samples, self.warmup_samples, self.global_batch = total_samples, warmup_samples, global_batch
        self.kind = kind
        self.samples_seen = 0
        super().__init__(optimizer)

    def factor(self, samples_seen: int) -> float:
        g = self.global_batch
        return lr_schedule(self.total_samples / g, self.warmup_samples / g, self.kind)(samples_seen / g)

    def get_lr(self) -> list[float | torch.Tensor]:
        return [base * self.factor(self.samples_seen) for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= 0:  # not the initial call from __init__: one more global batch was trained
            self.samples_seen += self.global_batch
        super().step(epoch)

    def resume_at(self, samples_seen: int, global_step: int) -> None:
        """Continue after ``samples_seen`` samples: the optimizer's lr (and initial_lr, both overwritten by its
        loaded state) become this run's base lr times the factor there."""
        self.samples_seen, self.last_epoch = samples_seen, global_step
        lrs = self.get_lr()
        for group, base, lr in zip(self.optimizer.param_groups, self.base_lrs, lrs, strict=True):
            group["initial_lr"], group["lr"] = base, lr
        self._last_lr = lrs
