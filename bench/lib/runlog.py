"""train.py run from the benchmarks, and its ``log.jsonl`` read one way: train.py's own "speed" record
(``lmdb_dali_train.speed``: its first print window left out as warm-up). A run without a whole window and a
step after it is an error (raise --max-steps or lower --print-freq).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import BenchError
from .data import REPO
from .table import Row

RULE = (
    'train.py\'s own figures (the "speed" record of its log.jsonl): its first print window left out as warm-up, '
    "the rest pooled by duration, the device synchronised before each clock read."
)


class RunFailed(BenchError):
    """train.py failed, timed out or logged too little."""


def events(log: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not log.is_file():
        raise RunFailed(f"no {log}")
    found = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in found if kind is None or e["event"] == kind]


@dataclass
class Steady:
    images_per_s: float
    data_wait: float
    steps: str  # the global steps counted, e.g. "21-60"
    warmup_steps: int  # left out before them


def steady(log: Path) -> Steady:
    """Images/s and data-wait of a run after its warm-up window, from its "speed" record (module's rule)."""
    logged = events(log)
    starts = [i for i, e in enumerate(logged) if e["event"] == "start"]
    latest = logged[starts[-1] :] if starts else logged  # the log is appended to: the last run's records
    found = [e for e in latest if e["event"] == "speed"]
    if not found:
        raise RunFailed(f"no speed record in {log.name}: train.py ran no step or did not reach its end")
    speed, windows = found[-1], [e for e in latest if e["event"] == "train"]
    if speed["images_per_s"] is None or not windows or speed["warmup_steps"] != windows[0]["steps"]:
        raise RunFailed(
            f"{log.name}: {len(windows)} train window(s), {speed['steps_run']} steps: no steady state after the "
            f"first window (raise --max-steps or lower --print-freq)"
        )
    return Steady(speed["images_per_s"], speed["data_wait"], speed["steps"], speed["warmup_steps"])


def run_train(flags: list[str], out: Path, timeout: float | None = None) -> Path:
    """``python train.py FLAGS --output-dir OUT`` in its own process group, output in ``OUT/std*.txt``;
    returns the log path. ``RunFailed`` on a non-zero exit (its last stderr line) or the timeout. OUT is the
    benchmark's own: an earlier run there is removed (train.py refuses a fresh run in another run's folder)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "train.py", *flags, "--output-dir", str(out)]
    with open(out / "stdout.txt", "wb") as so, open(out / "stderr.txt", "wb") as se:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=so, stderr=se, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RunFailed(f"timed out after {timeout:.0f} s") from None
    if code:
        lines = [x for x in (out / "stderr.txt").read_text(errors="replace").splitlines() if x.strip()]
        raise RunFailed(f"train.py exited {code}: {lines[-1][:240] if lines else '(no stderr)'}")
    return out / "log.jsonl"


def train_row(what: str, flags: list[str], out: Path, timeout: float | None = None) -> Row:
    """One train.py run as a table row: steady images/s and data-wait (``RunFailed`` if it fails)."""
    s = steady(run_train(flags, out, timeout))
    how = f"`train.py {' '.join(flags)}`, steps {s.steps}"
    return Row(what, how, f"{s.images_per_s:,.1f}", s.images_per_s, data_wait=f"{100 * s.data_wait:.1f} %")


def variant_flags(variant: str, db: Path | None) -> list[str]:
    return ["--synthetic"] if variant == "synthetic" else ["--loader", variant, "--lmdb", "--train", str(db)]


def fit_flags(loader: str, dbs: tuple[Path, ...], arch: str, args: argparse.Namespace) -> list[str]:
    """train.py's flags to fit ``arch`` on ``dbs`` (train, val), validating every epoch (val resize crop*8/7)."""
    flags = ["--loader", loader, "--lmdb", "--train", str(dbs[0]), "--val", str(dbs[1]), "-a", arch]
    flags += ["--epochs", str(args.epochs), "-b", str(args.batch), "--crop-size", str(args.crop), "--lr", str(args.lr)]
    return flags + ["--val-resize", str(args.crop * 8 // 7), "--print-freq", "5"]


def ratios_to_synthetic(rows: list[Row]) -> None:
    """Each training row's ratio to the synthetic row of the same model (``what`` ends in ", synthetic")."""
    for r in rows:
        base = next((b for b in rows if b.what == r.what.rsplit(", ", 1)[0] + ", synthetic" and b.rate), None)
        if base is not None and base.rate and r.rate:
            r.ratio = f"{r.rate / base.rate:.2f}x vs synthetic"
