"""Fault injection for the subprocess tests, from the test side: the product carries no test hooks.

A test puts this folder first on a child process's PYTHONPATH (``conftest.fault_env``), and Python
imports this module at start-up. Each ``FAULT_*`` variable set patches one point of the product:

- ``FAULT_EXIT_AFTER_COMMITS=N``: the converter's process exits hard (``os._exit(86)``, no cleanup, as
  kill -9 would) right after its N-th write transaction.
- ``FAULT_SIGTERM_AT_STEP=STEP`` or ``RANK:STEP``: the training process (of that global rank) sends
  itself SIGTERM after global step STEP.
- ``FAULT_SIGNAL_AT_STEP=RANK:STEP:TARGET[:SIGNAL]``: the training process of global rank RANK sends SIGTERM
  (or SIGNAL, e.g. ``USR1``) to TARGET after global step STEP: ``self``; ``group``, its whole process group
  (as a terminal's Ctrl-C or SLURM signal a job, loader workers included); ``torchrun``, the process
  whose id is in ``FAULT_TORCHRUN_PID`` (torchrun forwards it to every rank's process group).
- ``FAULT_KILL_AT_STEP=RANK:STEP``: the training process of global rank RANK kills itself with SIGKILL
  (no cleanup, as a crashed node or the OOM killer would) after global step STEP, in torchrun's first
  round only (``TORCHELASTIC_RESTART_COUNT`` 0 or unset): the restarted group runs on.
- ``FAULT_SIGNAL_IN_VAL=RANK:BATCH:TARGET``: the same from inside validation, once the validation
  loader of rank RANK has handed over BATCH batches.
- ``FAULT_LOADER_DELAY_S=SECONDS``: every training loader sleeps this long before each batch.
- ``FAULT_NAN_LOSS_AT_STEP=STEP``: the training loss of global step STEP (counted from 1) is NaN: the
  criterion's output times NaN, so the backward pass spreads NaN into the weights as a real divergence would.
- ``FAULT_SPAWNED_IMPORTS=DIR``: not a fault, a witness. Every process started by multiprocessing's spawn
  (DALI's Python source workers) writes ``DIR/source-<pid>`` when it imports ``dali_pipeline.source`` (it
  is a source worker) and ``DIR/torch-<pid>`` when it imports ``torch`` (which it must never do), from an
  audit hook: it sees the import whoever makes it, the re-run main module included.
- ``FAULT_GPU_ROW_HANGS=1``: a ``bench.gpu_check`` row process (``python -m bench.gpu_row``) hangs instead
  of measuring, as a stuck DALI pipeline would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _exit_after_commits(commits: int) -> None:
    from lmdb_io import writer

    put_all = writer.Writer.put_all
    done = 0

    def counted(self: writer.Writer, *args: object, **kwargs: object) -> None:
        nonlocal done
        put_all(self, *args, **kwargs)
        done += 1
        if done >= commits:
            os._exit(86)

    writer.Writer.put_all = counted


def _after_step(step: int, act: Callable[[], None]) -> None:
    """``act()`` in the training process right after its global step ``step``."""
    from lmdb_dali_train import engine

    train_step = engine.train_step

    def acting(state: engine.TrainState, batch: object) -> object:
        result = train_step(state, batch)
        if state.global_step == step:
            act()
        return result

    engine.train_step = acting


def _sigterm_at_step(spec: str) -> None:
    import signal

    target_rank, _, step = spec.rpartition(":")
    if not target_rank or int(target_rank) == int(os.environ.get("RANK", "0")):
        _after_step(int(step), lambda: os.kill(os.getpid(), signal.SIGTERM))


def _send_sigterm(target: str, name: str = "TERM") -> None:
    import signal

    signum = signal.Signals[f"SIG{name}"]
    if target == "group":  # from another process, as a terminal or SLURM would (a rank signals no one)
        import subprocess

        subprocess.run(["kill", f"-{name}", "--", f"-{os.getpgrp()}"], check=False)
    elif target == "torchrun":
        os.kill(int(os.environ["FAULT_TORCHRUN_PID"]), signum)
    else:
        assert target == "self", target
        os.kill(os.getpid(), signum)


def _this_rank(rank: str) -> bool:
    return int(rank) == int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _signal_at_step(spec: str) -> None:
    rank, step, target, *name = spec.split(":")
    if _this_rank(rank):
        _after_step(int(step), lambda: _send_sigterm(target, *name))


def _kill_at_step(spec: str) -> None:
    import signal

    rank, step = spec.split(":")
    if _this_rank(rank) and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        _after_step(int(step), lambda: os.kill(os.getpid(), signal.SIGKILL))


class _Wrapped:
    """A training loader that calls ``after(i)`` once its i-th batch (from 1) has been handed over."""

    def __init__(self, loader: Any, after: Callable[[int], None]) -> None:
        self.loader, self.after = loader, after

    def __len__(self) -> int:
        return len(self.loader)

    def close(self) -> None:
        self.loader.close()

    def __iter__(self) -> object:
        for i, batch in enumerate(self.loader, 1):
            yield batch
            self.after(i)


def _signal_in_val(spec: str) -> None:
    from lmdb_dali_train import main

    rank, batches, target = spec.split(":")
    if not _this_rank(rank):
        return
    make_loader = main.make_loader

    def after(i: int) -> None:
        if i == int(batches):
            _send_sigterm(target)

    def signalling(*args: object, **kwargs: object) -> object:
        loader = make_loader(*args, **kwargs)
        return loader if args[2] else _Wrapped(loader, after)  # make_loader(args, path, train, ...)

    main.make_loader = signalling


def _loader_delay(seconds: float) -> None:
    import time

    from lmdb_dali_train import main

    make_loader = main.make_loader
    main.make_loader = lambda *args, **kwargs: _Wrapped(make_loader(*args, **kwargs), lambda i: time.sleep(seconds))


def _nan_loss_at_step(step: int) -> None:
    import torch

    from lmdb_dali_train import main

    build_state = main.build_state

    def with_nan_loss(*args: object, **kwargs: object) -> object:
        state = build_state(*args, **kwargs)
        criterion = state.criterion

        class NaNAtStep(torch.nn.Module):
            def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                loss = criterion(logits, labels)
                return loss * float("nan") if state.global_step + 1 == step else loss

        state.criterion = NaNAtStep()
        return state

    main.build_state = with_nan_loss


def _witness_spawned_imports(folder: str) -> None:
    import sys

    if "spawn_main" not in " ".join(getattr(sys, "orig_argv", sys.argv)):
        return  # not a spawned multiprocessing child
    names = {"dali_pipeline.source": "source", "torch": "torch"}

    def hook(event: str, args: tuple) -> None:
        if event == "import" and args[0] in names:
            with open(os.path.join(folder, f"{names[args[0]]}-{os.getpid()}"), "w") as f:
                f.write(" ".join(getattr(sys, "orig_argv", sys.argv)))

    sys.addaudithook(hook)


def _gpu_row_hangs() -> None:
    import time

    from bench.lib.gpu import child

    def hanging(*args: object, **kwargs: object) -> int:
        time.sleep(3600)
        return 0

    child.run_row = hanging


if os.environ.get("FAULT_EXIT_AFTER_COMMITS"):
    _exit_after_commits(int(os.environ["FAULT_EXIT_AFTER_COMMITS"]))
if os.environ.get("FAULT_SIGTERM_AT_STEP"):
    _sigterm_at_step(os.environ["FAULT_SIGTERM_AT_STEP"])
if os.environ.get("FAULT_SIGNAL_AT_STEP"):
    _signal_at_step(os.environ["FAULT_SIGNAL_AT_STEP"])
if os.environ.get("FAULT_KILL_AT_STEP"):
    _kill_at_step(os.environ["FAULT_KILL_AT_STEP"])
if os.environ.get("FAULT_SIGNAL_IN_VAL"):
    _signal_in_val(os.environ["FAULT_SIGNAL_IN_VAL"])
if os.environ.get("FAULT_LOADER_DELAY_S"):
    _loader_delay(float(os.environ["FAULT_LOADER_DELAY_S"]))
if os.environ.get("FAULT_NAN_LOSS_AT_STEP"):
    _nan_loss_at_step(int(os.environ["FAULT_NAN_LOSS_AT_STEP"]))
if os.environ.get("FAULT_SPAWNED_IMPORTS"):
    _witness_spawned_imports(os.environ["FAULT_SPAWNED_IMPORTS"])
if os.environ.get("FAULT_GPU_ROW_HANGS"):
    _gpu_row_hangs()
