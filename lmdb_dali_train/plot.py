"""``python -m lmdb_dali_train.plot RUN_DIR``: a training run's curves as one PNG, RUN_DIR/curves.png.

Four panels over epochs (a print window at its fraction of its epoch, a validation at its epoch's end):
loss and top-1 accuracy (train per print window, val per epoch), images/s and data-wait per print window,
and the learning rate. Read from RUN_DIR/log.jsonl; the windows a resumed run redid, or a new run in the same
folder replaced, are drawn once (the newest). Needs matplotlib (the ``dev`` extra); draws without a display.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .exit_codes import ExitCode


class PlotError(Exception):
    """A folder that holds no run log, or a log with nothing to draw: one line."""


@dataclass
class Curves:
    """What log.jsonl holds to draw: ``train`` windows by global step, ``val`` events by epoch."""

    train: list[dict[str, Any]] = field(default_factory=list)
    val: dict[int, dict[str, Any]] = field(default_factory=dict)
    arch: str | None = None
    epochs: int | None = None


def read_log(run_dir: str) -> Curves:
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{run_dir}: no log.jsonl here (not a training run's --output-dir?)")
    curves = Curves()
    steps_per_epoch = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            kind = event.get("event")
            if kind == "start":
                optim = (event.get("config") or {}).get("optim") or {}
                curves.arch, curves.epochs = optim.get("arch", curves.arch), optim.get("epochs", curves.epochs)
                steps_per_epoch = event.get("steps_per_epoch")
            elif kind == "train":
                event.setdefault("steps_in_epoch", steps_per_epoch)
                # a resumed run redoes the steps after its checkpoint, a new run starts over: keep the newest
                if curves.train and curves.train[-1]["step"] >= event["step"]:
                    while curves.train and curves.train[-1]["step"] >= event["step"]:
                        curves.train.pop()
                    curves.val = {e: v for e, v in curves.val.items() if e < event["epoch"]}
                curves.train.append(event)
            elif kind == "val" and "epoch" in event and curves.train:
                curves.val = {e: v for e, v in curves.val.items() if e < event["epoch"]}
                curves.val[event["epoch"]] = event
    if not curves.train:
        raise PlotError(f"{run_dir}: its log.jsonl has no training window yet (nothing to draw)")
    return curves


def _x(event: dict[str, Any]) -> float:
    """A window's position in epochs: its epoch plus the share of the epoch done."""
    total = event.get("steps_in_epoch") or 0
    return event["epoch"] + (event["step_in_epoch"] / total if total else 0.0)


def draw(curves: Curves, title: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib.figure import Figure

    x = [_x(e) for e in curves.train]
    val_epochs = sorted(curves.val)
    vx = [e + 1 for e in val_epochs]
    fig = Figure(figsize=(12, 8), dpi=110, layout="constrained")
    loss, top1, speed, lr = fig.subplots(2, 2, sharex=True).flat

    loss.plot(x, [e["loss"] for e in curves.train], color="tab:blue", label="train (per print window)")
    top1.plot(x, [e["top1"] for e in curves.train], color="tab:blue", label="train top-1 (per print window)")
    if val_epochs:
        loss.plot(vx, [curves.val[e]["loss"] for e in val_epochs], "o-", color="tab:orange", label="val")
        top1.plot(vx, [curves.val[e]["top1"] for e in val_epochs], "o-", color="tab:orange", label="val top-1")
        top1.plot(vx, [curves.val[e]["top5"] for e in val_epochs], "s--", color="tab:green", label="val top-5")
    loss.set(title="Loss", ylabel="cross-entropy")
    top1.set(title="Accuracy", ylabel="% correct", ylim=(0, 105))  # room for markers at 100
    top1.set_yticks(range(0, 101, 20))

    speed.plot(x, [e["images_per_s"] for e in curves.train], color="tab:purple", label="images/s (all ranks)")
    speed.set(title="Throughput", ylabel="images/s", xlabel="epoch")
    speed.set_ylim(bottom=0)
    wait = speed.twinx()
    wait.plot(x, [100 * e["data_wait"] for e in curves.train], color="tab:red", alpha=0.6, label="data-wait")
    wait.set(ylabel="data-wait, % of loop time", ylim=(0, 100))
    handles = speed.get_legend_handles_labels()
    extra = wait.get_legend_handles_labels()
    speed.legend(handles[0] + extra[0], handles[1] + extra[1], loc="best", framealpha=0.9)

    lr.plot(x, [e["lr"] for e in curves.train], color="tab:gray")
    lr.set(title="Learning rate", ylabel="lr", xlabel="epoch")
    lr.set_ylim(bottom=0)
    for ax in (loss, top1):
        ax.legend(loc="best", framealpha=0.9)
    for ax in (loss, top1, speed, lr):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    fig.suptitle(title)
    fig.savefig(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lmdb_dali_train.plot",
        description="Draw a training run's curves (loss, top-1, images/s and data-wait, lr; train per print "
        "window, val per epoch) from RUN_DIR/log.jsonl into one PNG. Needs matplotlib.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's --output-dir (holding log.jsonl)")
    p.add_argument("-o", "--output", metavar="PNG", help="where to write the image (default RUN_DIR/curves.png)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.output or os.path.join(args.run_dir, "curves.png")
    try:
        curves = read_log(args.run_dir)
        try:
            import matplotlib  # noqa: F401 (probes whether it is installed)
        except ImportError:
            raise PlotError("matplotlib is not installed (pip install matplotlib)") from None
        last = curves.train[-1]
        title = f"{os.path.basename(os.path.abspath(args.run_dir))}: {curves.arch or 'model'}, epoch {_x(last):.2f}"
        title += (f" of {curves.epochs}" if curves.epochs else "") + f" (global step {last['step']})"
        if curves.val:
            best = max(curves.val.values(), key=lambda v: v["top1"])
            title += f"; best val top-1 {best['top1']:.2f}% at epoch {best['epoch']}"
        draw(curves, title, out)
    except (PlotError, OSError) as exc:
        print(f"python -m lmdb_dali_train.plot: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    print(out)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
