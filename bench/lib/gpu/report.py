"""The gpu check's table: ratios between its rows, the header saying how they were measured, a summary."""

import argparse
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .. import machine, runlog
from ..table import Table, yes_no
from ..timing import DATALOADER_PREFETCH
from . import Check
from .loader import torch_warmup
from .probe import Data
from .tier import GPU_TESTS


def set_ratios(checks: Sequence[Check]) -> None:
    """Loader rows: ratio to the best loader; training rows: to the same model's synthetic run; the cost row."""
    by_key = {c.key: c.row for c in checks if c.status == "ok" and c.row.rate}
    loaders = [c.row for c in checks if c.kind == "loader" and c.key in by_key]
    best = max((r.rate or 0.0 for r in loaders), default=0.0)
    for r in loaders:
        r.ratio = f"{(r.rate or 0.0) / best:.2f}x best loader"
    runlog.ratios_to_synthetic([c.row for c in checks if c.kind == "train"])
    roi = next((c for c in checks if c.key == "roi"), None)
    random = next((k for k in by_key if k.startswith("random-")), None)
    windows = by_key.get("dali-" + random.removeprefix("random-")) if random else None
    if roi is not None and random and windows is not None and windows.rate and by_key[random].rate:
        share = (by_key[random].rate or 0.0) / windows.rate - 1
        roi.row.result = f"{windows.rate:,.0f} vs {by_key[random].rate:,.0f} (`{random}`)"
        roi.row.ratio, roi.row.target, roi.row.met = f"{share * 100:+.1f} %", "<= 3 %", yes_no(share <= 0.03)
    elif roi is not None and not roi.row.result:
        roi.status, roi.row.result = "not run", "not run: needs the measured `dali` row and its `random` row"
    cost = next((c for c in checks if c.key == "cost"), None)
    if cost is None:
        return
    # like with like: the LMDB source in the pipeline's thread (py_workers 0), as the in-memory source runs
    pairs = [(k, f"memory-hw{k.rsplit('-hw', 1)[1]}") for k in by_key if k.startswith("dali-w0-")]
    pairs = [(k, m) for k, m in pairs if m in by_key]
    if pairs:
        top, mem = max(pairs, key=lambda p: by_key[p[0]].rate or 0.0)
        lmdb, memory = by_key[top].rate or 1.0, by_key[mem].rate or 0.0
        share = memory / lmdb - 1
        cost.row.result = f"{lmdb:,.0f} vs {memory:,.0f} (`{top}` vs `{mem}`)"
        cost.row.ratio, cost.row.target, cost.row.met = f"{share * 100:+.1f} %", "<= 10 %", yes_no(share <= 0.10)
    if not cost.row.result:
        cost.status, cost.row.result = "not run", "not run: needs a measured py_workers 0 row and its in-memory row"


def render(args: argparse.Namespace, info: dict[str, Any], d: Data, checks: Sequence[Check]) -> Table:
    sync = "" if args.cpu else "torch.cuda.synchronize() before each clock read, "
    header = (
        f"{'NO GPU: --cpu dry run. ' if args.cpu else ''}{machine.line(info)}\n"
        f"Test tier (first): `python -m pytest -m gpu {GPU_TESTS}` in a subprocess, at most {args.tests_budget:.0f} s; "
        f"output in OUT/gpu_tests.txt.\nData: {d.description}.\n"
        f"Loader-only rows, each in a process of its own killed after {args.row_budget:.0f} s (--row-budget): batch "
        f"{args.batch}, crop {args.crop}, one train epoch per run ({args.images // args.batch} batches), first "
        f"{args.warmup_batches} untimed (torchvision loader: {torch_warmup(args)}, its {args.torch_workers} workers x "
        f"prefetch {DATALOADER_PREFETCH} + 1), {sync}median of {args.runs} run(s), no model.\n"
        + (f"WARNING: {d.shm}.\n" if d.shm else "")
        + f"Training rows: train.py with the flags shown (DB: the LMDB above); {runlog.RULE} Synthetic batches have "
        "1000 classes."
    )
    title = "gpu_check: gpu test tier, DALI pipeline, torchvision loader and train.py" + " (CPU DRY RUN)" * args.cpu
    raw = {"machine": info, "params": {k: str(v) for k, v in vars(args).items()}}
    raw["rows"] = {c.key: {"status": c.status, "seconds": c.seconds, **c.detail} for c in checks}
    return Table(title, header, [c.row for c in checks], raw, {"result": "images/s (tests: result)"})


def summary(checks: Sequence[Check]) -> str:
    reasons = Counter(c.row.result[len("not run: ") :] for c in checks if c.status == "not run")
    failed, measured = sum(c.status == "failed" for c in checks), sum(c.status == "ok" for c in checks)
    skipped = "; ".join(f"{n} x {r}" for r, n in reasons.items()) or "nothing"
    return f"gpu_check: {measured} of {len(checks)} rows measured, {failed} failed; skipped: {skipped}"
