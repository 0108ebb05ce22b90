"""train.py run from the benchmarks, and its ``log.jsonl`` read one way.

The one warm-up rule: a run's first "train" window (start-up, first batches, cuDNN autotuning) is left
out; the windows after it are pooled, each weighted by its duration: images/s = their images / their
seconds, data-wait = their waited seconds / their seconds. A run with fewer than two windows has no
steady state and is an error (raise --max-steps or lower --print-freq).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import REPO
from .table import Row

RULE = "train.py's log.jsonl, the first train window (warm-up) left out, the rest pooled by duration."


class RunFailed(Exception):
    """train.py failed, timed out or logged too little: the message is one line."""


def events(log: Path, kind: str | None = None) -> list[dict[str, Any]]:
    if not log.is_file():
        raise RunFailed(f"no {log}")
    found = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in found if kind is None or e["event"] == kind]


@dataclass
class Steady:
    images_per_s: float
    data_wait: float
    steps: str  # the steps counted, e.g. "21-60"
    windows: int  # windows counted


def steady(log: Path) -> Steady:
    """Images/s and data-wait of a run after its first (warm-up) window; see the module's rule."""
    start = events(log, "start")[0]
    batch = start["args"]["batch_size"] * start["world_size"]
    windows, previous = [], 0
    for e in events(log, "train"):
        images = (e["step"] - previous) * batch
        seconds = images / e["images_per_s"]
        windows.append((e["step"], images, seconds, e["data_wait"] * seconds))
        previous = e["step"]
    kept = windows[1:]
    if not kept:
        raise RunFailed(f"{len(windows)} train window(s) in {log.name}: none after the warm-up one")
    seconds = sum(w[2] for w in kept)
    return Steady(
        sum(w[1] for w in kept) / seconds,
        sum(w[3] for w in kept) / seconds,
        f"{windows[0][0] + 1}-{kept[-1][0]}",
        len(kept),
    )


def run_train(flags: list[str], out: Path, timeout: float | None = None) -> Path:
    """``python train.py FLAGS --output-dir OUT`` in its own process group, output in ``OUT/std*.txt``;
    returns the log path. ``RunFailed`` on a non-zero exit (its last stderr line) or the timeout."""
    out.mkdir(parents=True, exist_ok=True)
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


def ratios_to_synthetic(rows: list[Row]) -> None:
    """Each training row's ratio to the synthetic row of the same model (``what`` ends in ", synthetic")."""
    for r in rows:
        base = next((b for b in rows if b.what == r.what.rsplit(", ", 1)[0] + ", synthetic" and b.rate), None)
        if base is not None and base.rate and r.rate:
            r.ratio = f"{r.rate / base.rate:.2f}x vs synthetic"
