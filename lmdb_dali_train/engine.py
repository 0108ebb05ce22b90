"""The training step loop, evaluation, and a stop signal every rank agrees on.

No host synchronisation inside a step except at print points: running sums stay on the device and are
read (and all-reduced) every ``--print-freq`` steps, and at a stop between them. Images/s and data-wait
(the share of the window's time spent in ``next(loader)``: near 0 when the loader keeps up, towards 1 when
the model waits for data) are read after the device finished the window's work: ``speed``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn

from lmdb_dali_train.loaders.batch import Batch, BatchLoader, counted, wants_fresh_process
from lmdb_io.reading.workers import STOP_SIGNALS  # SIGUSR1: a scheduler's warning (SLURM --signal)

from .bad_records import BadRecordLog
from .distributed import all_reduce_max, all_reduce_sum
from .runlog import RunLog
from .speed import Speedometer

BAD_RECORDS_SHARED_EVERY = 5  # steps between the all-gathers that share bad records under DDP


class StopSignal:
    """Records SIGTERM/SIGINT/SIGUSR1; ``agreed()`` is True on every rank once any rank got one, or once
    any rank asked for a fresh process (``ask_fresh_process``: its DALI pipeline failed, so the run saves
    and continues in a new process; ``fresh_agreed``).

    Installed when a run starts, so a signal at any time stops it. Every rank must call ``agreed()`` at
    the same points: before training, after every step, at each epoch's end and before each validation
    batch. It all-reduces three numbers on the host, over gloo (a gloo group of
    its own when the run's backend is another, NCCL on GPUs), so asking at every step adds no device
    synchronisation. A stop is agreed at the first such point after the signal, on every rank. The second
    number carries rank 0's wish to save a checkpoint now (``--save-every-minutes``: rank 0's clock
    decides), so every rank learns it at the same step, at no extra cost (``save_agreed``); the third, any
    rank's wish for a fresh process.
    ``timeout_s``: the side group's bound on each collective (``--dist-timeout``, as the run's own group;
    None: torch's default, 30 minutes).
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.signum = 0  # the first signal this process got (0: none)
        self.agreed_signum = 0  # the signal the ranks stopped for (the highest number any rank got)
        self.save_agreed = False  # some rank asked to save at the last agreement
        self.fresh_wanted = False  # this rank's loader can only go on slowly in this process (kept once asked)
        self.fresh_agreed = False  # some rank wants a fresh process, as of the last agreement
        self._group: dist.ProcessGroup | None = None
        self._asked = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum

    def ask_fresh_process(self) -> None:
        """This rank wants the run to continue in a fresh process (agreed at the next ``agreed()``)."""
        self.fresh_wanted = True

    def agreed(self, save: bool = False) -> bool:
        """Whether any rank got a stop signal or wants a fresh process; ``save``: this rank asks every rank
        to save (``save_agreed``)."""
        wishes = (self.signum, save, self.fresh_wanted)
        if dist.is_available() and dist.is_initialized():  # else one process: no collective
            flags = torch.tensor([float(wish) for wish in wishes])
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.host_group())
            wishes = (int(flags[0]), bool(flags[1]), bool(flags[2]))
        self.agreed_signum, self.save_agreed, self.fresh_agreed = int(wishes[0]), bool(wishes[1]), bool(wishes[2])
        return self.agreed_signum > 0 or self.fresh_agreed

    def host_group(self) -> dist.ProcessGroup | None:
        """The group for host-side (CPU tensor) collectives: None, the run's own, when that is gloo, else a
        gloo group made at the first call (the same point on every rank), also the bad records' (``agree``)."""
        if not self._asked:
            self._asked = True
            if dist.get_backend() != "gloo":
                timeout = None if self.timeout_s is None else timedelta(seconds=self.timeout_s)
                group = dist.new_group(backend="gloo", timeout=timeout)
                self._group = group if isinstance(group, dist.ProcessGroup) else None  # every rank is a member
        return self._group

    @contextlib.contextmanager
    def deferred_to_default(self) -> Iterator[None]:
        """While the block runs, the stop signals do what they do by default: end the process at once.
        For the start-up rendezvous, a wait inside torch that never returns to Python (a peer that never
        comes): a SIGTERM there (torchrun stopping its workers) must not wait out ``--dist-timeout``, and
        there is nothing to save yet."""
        handlers = {sig: signal.signal(sig, signal.SIG_DFL) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class SaveCadence:
    """When to save a resumable checkpoint mid-epoch: every ``every_steps`` global steps (every rank
    counts the same), and/or every ``every_minutes`` since the last save by rank 0's clock (rank 0 asks,
    ``StopSignal.agreed`` carries it to every rank at the same step)."""

    def __init__(
        self,
        every_steps: int | None,
        every_minutes: float | None,
        is_main: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_steps = every_steps
        self.every_s = None if every_minutes is None else every_minutes * 60
        self.is_main, self.clock = is_main, clock
        self.last = clock()

    def asks(self) -> bool:
        """This rank's wish to save now (rank 0's clock only)."""
        return self.is_main and self.every_s is not None and self.clock() - self.last >= self.every_s

    def due(self, global_step: int, agreed: bool) -> bool:
        """Whether every rank saves after ``global_step``: the steps' cadence, or the wish ``agreed`` on."""
        return agreed or (self.every_steps is not None and global_step % self.every_steps == 0)

    def saved(self) -> None:
        self.last = self.clock()


@dataclass
class TrainState:
    model: nn.Module  # what is called: DDP and/or compiled wrapper
    module: nn.Module  # the plain model whose state_dict is saved
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    epoch: int = 0  # the epoch in progress (or next to start)
    step_in_epoch: int = 0  # optimizer steps already done in ``epoch``
    epoch_position: int = 0  # samples of ``epoch``'s global order consumed by all ranks (RankPlan's skip)
    global_step: int = 0
    first_nonfinite: torch.Tensor | None = None  # on the device: the first global step with a NaN/inf loss, else inf
    val_tta: bool = False  # evaluate averages the outputs on each image and its horizontal mirror (--val-tta)


class NonFiniteLossError(Exception):
    """The training loss became NaN or infinite: the weights are spoiled, so the run stops without saving."""

    def __init__(self, step: int) -> None:
        super().__init__(
            f"the training loss is not finite (NaN or inf) at global step {step}; stopped without saving a "
            f"checkpoint (the newest one saved before is kept): lower --lr or check the data"
        )
        self.step = step


def note_loss(state: TrainState, loss: torch.Tensor) -> None:
    """Remember the first global step whose loss is not finite, on the device (no host sync)."""
    if state.first_nonfinite is None:
        state.first_nonfinite = torch.full((1,), math.inf, dtype=torch.float64, device=state.device)
    here = torch.where(torch.isfinite(loss.detach()).all(), math.inf, float(state.global_step))
    state.first_nonfinite = torch.minimum(state.first_nonfinite, here.to(torch.float64).view(1))


def check_finite(state: TrainState) -> None:
    """NonFiniteLossError on every rank if any rank saw a non-finite loss (a collective: all ranks call it)."""
    seen = state.first_nonfinite
    if seen is None:
        seen = torch.full((1,), math.inf, dtype=torch.float64, device=state.device)
    first = -all_reduce_max(-seen.clone()).item()
    if math.isfinite(first):
        raise NonFiniteLossError(int(first))


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[top-1 correct, top-5 correct] as a float tensor on the device (no sync)."""
    k = min(5, logits.shape[1])
    hits = logits.topk(k, dim=1).indices.eq(labels.view(-1, 1))
    if mask is not None:
        hits = hits & mask.view(-1, 1)
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).float()


class KeyLog:
    """--log-keys: one line per real sample trained on (epoch, global step, key), per global rank."""

    def __init__(self, path: str, key_of: Callable[[int], str]) -> None:
        self.key_of = key_of
        self.file: TextIO = open(path, "a", encoding="utf-8")

    def write(self, epoch: int, step: int, indices: torch.Tensor, padding: torch.Tensor) -> None:
        rows = [
            f"{epoch}\t{step}\t{self.key_of(i)}\n"
            for i, pad in zip(indices.tolist(), padding.tolist(), strict=True)
            if not pad
        ]
        self.file.writelines(rows)
        self.file.flush()  # each step's keys reach the file: a rank killed later loses none of them

    def close(self) -> None:
        self.file.close()


def train_step(state: TrainState, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``batch``; returns (loss, logits), detached, still on the device."""
    with torch.autocast(state.device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        logits = state.model(batch.images)
        loss = state.criterion(logits, batch.labels)
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        loss.backward()
        state.optimizer.step()
    state.scheduler.step()
    state.step_in_epoch += 1
    state.global_step += 1
    return loss.detach(), logits.detach()


def train_epoch(
    state: TrainState,
    loader: BatchLoader,
    *,
    print_freq: int,
    world_size: int,
    log: RunLog,
    stop: StopSignal,
    steps_left: int | None,
    key_log: KeyLog | None = None,
    bad: BadRecordLog | None = None,
    meter: Speedometer | None = None,
    cadence: SaveCadence | None = None,
    save: Callable[[], None] | None = None,
) -> tuple[str, int]:
    """Run the rest of ``state.epoch``: the loader's ``len()`` batches, which it must yield exactly.

    Returns (why it ended: done, stopped, max_steps or bad_records; steps run). The bad records met since
    the last agreement are not agreed on the epoch's last batch: the epoch ends as done and the caller
    agrees at the epoch's end (after validation), once.
    A window is logged at every print point and, when the loop stops between them, at the stop (every
    rank stops at the same step). ``meter`` carries the run's figures across epochs (see ``speed``).
    ``save`` writes a resumable checkpoint (a collective) when ``cadence`` says so, on every rank at the same
    step, never after the epoch's last one (the epoch's end saves) nor at a stop (the stop saves).
    """
    state.model.train()
    device = state.device
    meter = meter or Speedometer(device, world_size)
    batches_in_epoch = state.step_in_epoch + len(loader)
    window = torch.zeros(3, device=device)  # loss sum, top-1, top-5: on the device between prints
    steps = 0

    def log_window() -> None:
        _log_window(state, meter, window, batches_in_epoch, world_size, log)
        window.zero_()

    def ended(why: str) -> tuple[str, int]:
        if why != "done" and meter.window_open():
            log_window()  # the stop's partial window
        meter.pause()
        return why, steps

    meter.resume(state.global_step)
    iterator = counted(loader, "the training loader")
    while True:
        before = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return ended("done")
        meter.waited(time.perf_counter() - before)
        if wants_fresh_process(loader):
            stop.ask_fresh_process()
        loss, logits = train_step(state, batch)
        note_loss(state, loss)
        with torch.no_grad():
            n = batch.labels.numel()
            window += torch.cat([loss.float().view(1) * n, topk_correct(logits, batch.labels)])
        steps += 1
        meter.step(n, state.global_step)
        state.epoch_position += n * world_size
        if key_log is not None:
            key_log.write(state.epoch, state.global_step, batch.indices, batch.padding)
        if state.step_in_epoch % print_freq == 0 or state.step_in_epoch == batches_in_epoch:
            log_window()
        if bad is not None:  # every rank agrees at the same steps; at the epoch's last, the caller (after validation)
            last = state.step_in_epoch == batches_in_epoch
            bad.collect(loader, state.epoch, state.global_step)
            if not last and bad.due(steps, BAD_RECORDS_SHARED_EVERY) and bad.agree():
                return ended("bad_records")
        if state.step_in_epoch == batches_in_epoch:
            continue  # the last batch: finish the epoch (the loader's end is its "done"; the caller asks then)
        if stop.agreed(save=cadence is not None and cadence.asks()):
            return ended("stopped")
        if steps_left is not None and steps >= steps_left:
            return ended("max_steps")
        if save is not None and cadence is not None and cadence.due(state.global_step, stop.save_agreed):
            save()


def _log_window(
    state: TrainState, meter: Speedometer, window: torch.Tensor, batches: int, world_size: int, log: RunLog
) -> None:
    """One "train" record: the window's metrics over all ranks (a collective), its images/s and data-wait
    on a reading taken after the device finished the window's work (``Speedometer.close_window``). The
    window's samples are the meter's images: every rank's, as train batches are equal on every rank."""
    figures = meter.close_window()
    check_finite(state)
    loss, top1, top5 = all_reduce_sum(window.clone()).tolist()
    n = figures.images
    log.record(
        "train",
        f"epoch {state.epoch} step {state.step_in_epoch}/{batches} loss {loss / n:.4f} top1 {100 * top1 / n:.2f} "
        f"top5 {100 * top5 / n:.2f} lr {state.optimizer.param_groups[0]['lr']:.5f} img/s {figures.images_per_s:.1f} "
        f"data-wait {100 * figures.data_wait:.0f}%",
        epoch=state.epoch,
        step=state.global_step,
        step_in_epoch=state.step_in_epoch,
        loss=loss / n,
        top1=100 * top1 / n,
        top5=100 * top5 / n,
        images_per_s=figures.images_per_s,
        data_wait=figures.data_wait,
        steps=figures.steps,
        images=n,
        seconds=round(figures.seconds, 4),
        steps_in_epoch=batches,
        lr=state.optimizer.param_groups[0]["lr"],
        world_size=world_size,
    )


def log_speed(log: RunLog, meter: Speedometer, reason: str) -> None:
    """One "speed" record at the run's end, whatever ended it (a crash included: rank-local, no collective):
    images/s and data-wait of the whole run after its warm-up (``speed``'s rule, the steps left out named)
    and of its last window. Nothing for a run that ran no step."""
    if meter.steps == 0:
        return
    summary = meter.summary()
    run, last, warmup = summary["run"], summary["last_window"], summary["warmup_steps"]
    human = f"speed of the run ({reason}): " + (
        f"{run.line()}, the first {warmup} step(s) left out as warm-up" if run else f"only its {warmup} warm-up step(s)"
    )
    if last is not None:
        human += f"; last window {last.line()}"
    figures = (
        run.fields() if run else {"steps": None, "images": 0, "seconds": 0.0, "images_per_s": None, "data_wait": None}
    )
    log.record(
        "speed",
        human,
        reason=reason,
        steps_run=summary["steps_run"],
        warmup_steps=warmup,
        **figures,
        last_window=last.fields() if last else None,
    )


@torch.no_grad()
def evaluate(state: TrainState, loader: BatchLoader, stop: StopSignal | None = None) -> dict[str, float] | None:
    """Loss and top-1/top-5 over all ranks; padding is not counted. With ``stop``: None once a stop signal
    is agreed (asked before each batch), and no metrics over part of the set (a wish for a fresh process
    waits for the end). With ``state.val_tta`` the logits
    are the mean of the model's on each image and on its mirror (FFCV sums them: the same top-k)."""
    state.model.eval()
    device = state.device
    sums = torch.zeros(4, device=device)
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    for batch in counted(loader, "the validation loader"):
        if stop is not None:
            if wants_fresh_process(loader):
                stop.ask_fresh_process()
            if stop.agreed() and stop.agreed_signum:
                return None
        real = (~batch.padding).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
            logits = state.model(batch.images)
            if state.val_tta:
                logits = (logits + state.model(batch.images.flip(3))) / 2  # NCHW: dim 3 is the width
        losses = loss_fn(logits.float(), batch.labels) * real
        sums += torch.cat([losses.sum().view(1), topk_correct(logits, batch.labels, real), real.sum().float().view(1)])
    loss, top1, top5, count = all_reduce_sum(sums).tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count, "count": int(count)}
