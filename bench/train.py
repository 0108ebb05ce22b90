"""Acceptance run: resnet18 from scratch on hymenoptera through train.py, several seeds, both loaders.

Per loader and seed: the mean training loss of the first and last epochs, how far it fell, and the final
val top-1, then mean / spread per loader (the set is small and noisy: the table reports, nobody tunes to it).
Example: ``python -m bench.train --seeds 0 1 2 --epochs 16``
"""

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.lib import data, entry, machine, runlog
from bench.lib.table import Row, Table

LOADERS = ("dali", "torch")


def one_run(loader: str, seed: int, dbs: tuple[Path, Path], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    flags = runlog.fit_flags(loader, dbs, "resnet18", args)
    log = runlog.run_train([*flags, "--warmup-epochs", "1", "--seed", str(seed), "--device", "cpu"], out)
    per_epoch: dict[int, list[float]] = {}
    for e in runlog.events(log, "train"):
        per_epoch.setdefault(e["epoch"], []).append(e["loss"])
    first, last = statistics.mean(per_epoch[min(per_epoch)]), statistics.mean(per_epoch[max(per_epoch)])
    top1 = [e["top1"] for e in runlog.events(log, "val")]
    seconds = time.perf_counter() - started
    said = f"{loader} seed {seed}: loss {first:.3f} -> {last:.3f}, top-1 {top1[-1]:.1f}% ({seconds:.0f} s)"
    print(said, file=sys.stderr)
    found = {"loader": loader, "seed": seed, "first_epoch_loss": first, "last_epoch_loss": last}
    return found | {"fall": 1 - last / first, "val_top1": top1[-1], "val_top1_by_epoch": top1, "seconds": seconds}


@entry
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed and loader (0 1 2)")
    p.add_argument("--epochs", type=data.positive, default=16, help="epochs per run (default 16)")
    p.add_argument("--batch", type=data.positive, default=32, help="batch size (default 32)")
    p.add_argument("--crop", type=data.positive, default=128, help="train crop (128 on a CPU); val resize crop*8/7")
    p.add_argument("--lr", type=float, default=0.2, help="for a global batch of 256, scaled (default 0.2)")
    data.add_common_flags(p)
    args = p.parse_args(argv)
    with data.workdir(args.workdir, "bench_train_") as work:
        dbs = work / "train.lmdb", work / "val.lmdb"
        data.convert(args.source / "train", dbs[0])
        data.convert(args.source / "val", dbs[1], "--classes-from", str(dbs[0]))
        runs = [one_run(ld, seed, dbs, work / f"{ld}-{seed}", args) for ld in LOADERS for seed in args.seeds]
    rows = []
    for r in runs:
        losses = f"loss {r['first_epoch_loss']:.3f} (first epoch) -> {r['last_epoch_loss']:.3f} (last)"
        fall = f"{100 * r['fall']:.1f}% fall"
        rows.append(Row(f"{r['loader']}, seed {r['seed']}", losses, f"{r['val_top1']:.1f}%", ratio=fall))
    for loader in LOADERS:
        top1 = [r["val_top1"] for r in runs if r["loader"] == loader]
        falls = [100 * r["fall"] for r in runs if r["loader"] == loader]
        result = f"{statistics.mean(top1):.1f}% ± {statistics.stdev(top1) if len(top1) > 1 else 0.0:.1f}"
        ratio = f"{statistics.mean(falls):.1f}% fall (min {min(falls):.1f}%)"
        rows.append(Row(f"**{loader}**, mean of {len(top1)}", "", result, ratio=ratio))
    title = f"hymenoptera, resnet18 from scratch, {args.epochs} epochs, batch {args.batch}, crop {args.crop}, CPU"
    header = machine.line(machine.describe(gpu=False))
    return Table(title, header, rows, {"runs": runs}, {"result": "val top-1"}).report(args.json)


if __name__ == "__main__":
    sys.exit(main())
