"""The learning-rate schedule: linear warm-up, then cosine decay, counted in samples seen so that a run
resumed on another global batch continues where its data is."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_schedule(total_steps: float, warmup_steps: float) -> Callable[[float], float]:
    """Linear warm-up from 0, then cosine decay to 0, as a multiplier of the base learning rate.

    ``step`` counts optimizer steps of one global batch; ``SamplesLR`` calls it with samples seen over the
    current global batch (a fraction after a resume on another one)."""

    def factor(step: float) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SamplesLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr_schedule`` by samples seen, not optimizer steps: each ``step()`` adds one global batch.

    Lengths are in samples (``total_samples``, ``warmup_samples``); the factor for the next step is
    ``lr_schedule(total / G, warmup / G)(seen / G)`` for the global batch ``G``, which on a run that keeps its
    batch is the step schedule exactly. A resume on another global batch (``resume_at``) keeps the samples
    seen, so the schedule continues where the data is, and the base lr is the one scaled to the new batch.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_samples: int, warmup_samples: int, global_batch: int
    ) -> None:
        self.total_samples, self.warmup_samples, self.global_batch = total_samples, warmup_samples, global_batch
        self.samples_seen = 0
        super().__init__(optimizer)

    def factor(self, samples_seen: int) -> float:
        g = self.global_batch
        return lr_schedule(self.total_samples / g, self.warmup_samples / g)(samples_seen / g)

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
