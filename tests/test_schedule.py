"""The learning-rate schedule's values, and the linear LR scaling as build_state applies it."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lmdb_dali_train.config import OptimConfig, RunConfig
from lmdb_dali_train.distributed import Placement
from lmdb_dali_train.engine import TrainState
from lmdb_dali_train.errors import ConfigError
from lmdb_dali_train.flags import parse_args
from lmdb_dali_train.model import build_state
from lmdb_dali_train.schedule import lr_schedule


def test_linear_warmup() -> None:
    f = lr_schedule(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(1 / 10)  # never 0: the first step already learns
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(9) == 1.0


@pytest.mark.parametrize(
    "step, expected",
    [
        (10, 1.0),  # the decay starts at the peak
        (40, 0.75),  # a third of the way: 0.5 * (1 + cos(pi / 3))
        (55, 0.5),  # the midpoint of the decay
        (70, 0.25),  # two thirds: 0.5 * (1 + cos(2 pi / 3))
        (99, 0.5 * (1 + math.cos(math.pi * 89 / 90))),
        (100, 0.0),  # the end
        (101, 0.0),  # clamped after it
        (1000, 0.0),
    ],
)
def test_cosine_decay_after_warmup(step: int, expected: float) -> None:
    assert lr_schedule(total_steps=100, warmup_steps=10)(step) == pytest.approx(expected, abs=1e-12)


def test_cosine_is_monotone() -> None:
    f = lr_schedule(total_steps=100, warmup_steps=10)
    values = [f(s) for s in range(120)]
    assert values[:10] == sorted(values[:10])  # warming up
    assert values[9:] == sorted(values[9:], reverse=True)  # decaying, never back up


def test_no_warmup() -> None:
    f = lr_schedule(total_steps=8, warmup_steps=0)
    assert f(0) == 1.0 and f(4) == pytest.approx(0.5) and f(8) == 0.0 and f(9) == 0.0
    assert f(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_as_long_as_the_run() -> None:
    f = lr_schedule(total_steps=5, warmup_steps=5)
    assert [f(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(5) == 1.0 and f(6) == 0.0  # no decay steps left: clamped at once


# -- linear scaling in build_state ----------------------------------------------------------------


def _args(*extra: str) -> RunConfig:
    return RunConfig.from_args(
        parse_args(["--synthetic", "-a", "resnet18", "--epochs", "2", "--warmup-epochs", "0.5", *extra])
    )


def _lrs(state: TrainState, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(state.optimizer.param_groups[0]["lr"])
        state.optimizer.step()
        state.scheduler.step()
    return out


@pytest.mark.parametrize("batch, lr", [(32, 0.1), (256, 0.1), (100, 0.4)])
def test_lr_scales_with_the_batch_on_one_process(batch: int, lr: float) -> None:
    args = _args("-b", str(batch), "--lr", str(lr))
    state = build_state(args, Placement(0, 1, 0), torch.device("cpu"), num_classes=2, steps_per_epoch=10)
    base = lr * batch / 256
    assert state.optimizer.param_groups[0]["initial_lr"] == pytest.approx(base)
    f = lr_schedule(total_steps=20, warmup_steps=5)  # 2 epochs of 10 steps, half an epoch of warm-up
    assert _lrs(state, 22) == pytest.approx([base * f(s) for s in range(22)])
    group = state.optimizer.param_groups[0]
    assert group["momentum"] == args.optim.momentum and group["weight_decay"] == args.optim.wd


@pytest.fixture
def process_group() -> Iterator[None]:
    """A one-process gloo group with an in-memory store (no port): what DDP's constructor needs."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_lr_scales_with_the_global_batch(process_group: None) -> None:
    """Four ranks of -b 32: the global batch is 128, so --lr 0.1 becomes 0.05, and the model is wrapped in DDP.

    The placement says world size 4 while the process group has one member: build_state takes the world
    size from the placement, and DDP's constructor only needs a group to exist.
    """
    args = _args("-b", "32", "--lr", "0.1")
    state = build_state(args, Placement(0, 4, 0), torch.device("cpu"), num_classes=2, steps_per_epoch=10)
    assert isinstance(state.model, torch.nn.parallel.DistributedDataParallel) and state.model.module is state.module
    assert state.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.1 * 32 * 4 / 256)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * lr_schedule(20, 5)(0))
    assert state.module.fc.out_features == 2


# -- the schedule continues by samples seen across a resume on another global batch (issue 10) ------


def _checkpoint_after(tmp_path, steps: int, *flags: str) -> tuple[str, float]:
    """A run of ``steps`` steps with ``flags``, saved as _save does; the checkpoint's path and the schedule's
    factor for the next step (its learning rate over the base one)."""
    from lmdb_dali_train.resume import save

    args = _args(*flags, "--output-dir", str(tmp_path))
    state = build_state(args, Placement(0, 1, 0), torch.device("cpu"), num_classes=2, steps_per_epoch=10)
    _lrs(state, steps)
    state.global_step = state.step_in_epoch = steps
    state.epoch_position = steps * args.optim.batch_size
    save(state, args, None, Placement(0, 1, 0))
    group = state.optimizer.param_groups[0]
    return str(tmp_path / f"checkpoint-step{steps:09d}.pt"), group["lr"] / group["initial_lr"]


@pytest.mark.parametrize("steps", [3, 7])  # in the warm-up (5 steps of batch 32), and in the decay
def test_resume_on_another_batch_continues_the_schedule_by_samples(tmp_path, steps: int) -> None:
    """Batch 32 for ``steps`` steps, resumed with batch 16: the base learning rate is rescaled to the new
    global batch (0.1 * 16 / 256), and the schedule continues from the samples seen (32 * steps), advancing by
    16 samples a step: samples, not optimizer steps. In the decay that is the factor the first run had
    reached; in the warm-up the ramp counts the samples seen once the step is done (+16 here, not +32)."""
    from lmdb_dali_train.resume import restore
    from lmdb_dali_train.runlog import RunLog

    path, factor = _checkpoint_after(tmp_path, steps, "-b", "32", "--lr", "0.1")
    args = _args("-b", "16", "--lr", "0.1")  # 2 epochs of 20 steps of 16 = 640 samples, as 20 of 32 were
    state = build_state(args, Placement(0, 1, 0), torch.device("cpu"), num_classes=2, steps_per_epoch=20)
    restore(state, path, None, False, RunLog(str(tmp_path), enabled=False))
    base = 0.1 * 16 / 256
    assert state.optimizer.param_groups[0]["initial_lr"] == pytest.approx(base)
    by_samples = lr_schedule(total_steps=640 / 16, warmup_steps=160 / 16)  # in steps of the new batch
    seen = 32 * steps
    if seen >= 160:  # past the warm-up
        assert state.optimizer.param_groups[0]["lr"] == pytest.approx(base * factor)
    else:
        assert factor == pytest.approx((seen + 32) / 160)
        assert state.optimizer.param_groups[0]["lr"] == pytest.approx(base * (seen + 16) / 160)
    assert _lrs(state, 30) == pytest.approx([base * by_samples((seen + 16 * k) / 16) for k in range(30)])


def test_resume_with_another_arch_is_a_one_line_refusal(tmp_path) -> None:
    from conftest import assert_one_line_error, run_main

    from lmdb_dali_train.main import main as train_main

    out = str(tmp_path / "run")
    common = ["--synthetic", "--device", "cpu", "-b", "2", "--crop-size", "32", "--output-dir", out]
    first = run_main(train_main, *common, "-a", "resnet18", "--max-steps", "1")
    assert first.returncode == 0, first.stderr
    refused = run_main(train_main, *common, "-a", "resnet34", "--resume", "auto", "--max-steps", "1")
    assert_one_line_error(refused, "resnet18", "--arch resnet34")


# -- --lr-schedule triangular: FFCV's cyclic schedule, per step and by samples -------------------------


def _ffcv_step_lrs(lr: float, epochs: int, peak: int, iters: int) -> list[float]:
    """FFCV's train_imagenet.py: ``get_cyclic_lr(epoch)`` is np.interp([epoch], [0, lr_peak_epoch, epochs],
    [1e-4 * lr, lr, 0]), and ``train_loop`` interpolates each epoch's iterations between get_lr(epoch) and
    get_lr(epoch + 1): np.interp(np.arange(iters), [0, iters], [lr_start, lr_end])."""

    def get_cyclic_lr(epoch: int) -> float:
        return float(np.interp([epoch], [0, peak, epochs], [1e-4 * lr, lr, 0])[0])

    out: list[float] = []
    for epoch in range(epochs):
        start, end = get_cyclic_lr(epoch), get_cyclic_lr(epoch + 1)
        out += np.interp(np.arange(iters), [0, iters], [start, end]).tolist()
    return out


def test_triangular_is_ffcvs_cyclic_schedule_per_step() -> None:
    f = lr_schedule(total_steps=6 * 7, warmup_steps=2 * 7, kind="triangular")
    assert [f(s) for s in range(6 * 7)] == pytest.approx(_ffcv_step_lrs(1.0, epochs=6, peak=2, iters=7), abs=1e-12)
    assert f(0) == pytest.approx(1e-4) and f(14) == 1.0 and f(42) == 0.0 and f(50) == 0.0


def test_triangular_without_warmup_starts_at_the_peak() -> None:
    f = lr_schedule(total_steps=10, warmup_steps=0, kind="triangular")
    assert [f(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])


def test_build_state_follows_lr_schedule_triangular() -> None:
    args = _args("-b", "64", "--lr", "0.2", "--lr-schedule", "triangular", "--lr-peak-epoch", "1")
    assert (args.optim.lr_schedule, args.optim.warmup_epochs) == ("triangular", 1.0)
    state = build_state(args, Placement(0, 1, 0), torch.device("cpu"), num_classes=2, steps_per_epoch=10)
    base = 0.2 * 64 / 256
    expected = [lr * base for lr in _ffcv_step_lrs(1.0, epochs=2, peak=1, iters=10)]
    assert _lrs(state, 20) == pytest.approx(expected, abs=1e-12)


def test_the_default_schedule_stays_cosine() -> None:
    assert _args().optim.lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="--lr-schedule step: one of cosine, triangular"):
        OptimConfig(lr_schedule="step")


def test_triangular_resumes_on_another_batch_by_samples(tmp_path) -> None:
    """Batch 32 for 7 steps (past the peak at 5), resumed on batch 16: the schedule goes on by samples seen."""
    from lmdb_dali_train.resume import restore
    from lmdb_dali_train.runlog import RunLog

    tri = ("--lr-schedule", "triangular")
    path, factor = _checkpoint_after(tmp_path, 7, "-b", "32", "--lr", "0.1", *tri)
    state = build_state(
        _args("-b", "16", "--lr", "0.1", *tri), Placement(0, 1, 0), torch.device("cpu"), 2, steps_per_epoch=20
    )
    restore(state, path, None, False, RunLog(str(tmp_path), enabled=False))
    base = 0.1 * 16 / 256
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(base * factor)
    by_samples = lr_schedule(total_steps=640 / 16, warmup_steps=160 / 16, kind="triangular")
    assert _lrs(state, 30) == pytest.approx([base * by_samples((32 * 7 + 16 * k) / 16) for k in range(30)])
