#!/usr/bin/env python3
"""Acceptance run: resnet18 from scratch on hymenoptera, several seeds, both loaders, on this machine.

Converts the shared hymenoptera set (train, and val with the train class map), trains with
``train.py --loader dali|torch --lmdb`` for each seed, and prints one table: first and last logged
training loss, how far it fell, and the final val top-1, per run and as mean / spread per loader.
This set is small and noisy: the table reports, nobody tunes to it.

    python bench/train_hymenoptera.py --seeds 0 1 2 --epochs 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def sh(*cmd: str) -> None:
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def one_run(
    loader: str, seed: int, train_db: Path, val_db: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    started = time.perf_counter()
    sh(
        "train.py",
        "--loader",
        loader,
        "--lmdb",
        "--train",
        str(train_db),
        "--val",
        str(val_db),
        "-a",
        "resnet18",
        "--epochs",
        str(args.epochs),
        "-b",
        str(args.batch),
        "--lr",
        str(args.lr),
        "--warmup-epochs",
        "1",
        "--crop-size",
        str(args.crop),
        "--val-resize",
        str(args.crop * 8 // 7),
        "--seed",
        str(seed),
        "--print-freq",
        "5",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    )
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    per_epoch: dict[int, list[float]] = {}
    for e in events:
        if e["event"] == "train":
            per_epoch.setdefault(e["epoch"], []).append(e["loss"])
    first, last = statistics.mean(per_epoch[min(per_epoch)]), statistics.mean(per_epoch[max(per_epoch)])
    top1 = [e["top1"] for e in events if e["event"] == "val"]
    return {
        "loader": loader,
        "seed": seed,
        "first_epoch_loss": first,
        "last_epoch_loss": last,
        "fall": 1 - last / first,
        "val_top1": top1[-1],
        "val_top1_by_epoch": top1,
        "windows": len(losses),
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=128, help="train crop (default 128 on this CPU); val resize crop*8/7")
    p.add_argument("--lr", type=float, default=0.2, help="for a global batch of 256, scaled (default 0.2)")
    p.add_argument("--json", help="also write the runs as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_db, val_db = work / "train.lmdb", work / "val.lmdb"
        sh("convert.py", "--dataset", str(HYMENOPTERA / "train"), "-o", str(train_db), "-q")
        sh(
            "convert.py",
            "--dataset",
            str(HYMENOPTERA / "val"),
            "-o",
            str(val_db),
            "-q",
            "--classes-from",
            str(train_db),
        )
        runs = []
        for loader in ("dali", "torch"):
            for seed in args.seeds:
                runs.append(one_run(loader, seed, train_db, val_db, work / f"{loader}-{seed}", args))
                r = runs[-1]
                print(
                    f"{loader} seed {seed}: loss {r['first_epoch_loss']:.3f} -> {r['last_epoch_loss']:.3f} "
                    f"({100 * r['fall']:.0f}% fall), val top-1 {r['val_top1']:.1f}% ({r['seconds']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"\n### hymenoptera, resnet18 from scratch, {args.epochs} epochs, batch {args.batch}, crop {args.crop}, CPU\n"
    )
    print("| loader | seed | loss, first epoch | loss, last epoch | fall | val top-1 |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['loader']} | {r['seed']} | {r['first_epoch_loss']:.3f} | {r['last_epoch_loss']:.3f} | "
            f"{100 * r['fall']:.1f}% | {r['val_top1']:.1f}% |"
        )
    for loader in ("dali", "torch"):
        top1 = [r["val_top1"] for r in runs if r["loader"] == loader]
        falls = [r["fall"] for r in runs if r["loader"] == loader]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(
            f"| **{loader}** | mean | | | {100 * statistics.mean(falls):.1f}% (min {100 * min(falls):.1f}%) | "
            f"{statistics.mean(top1):.1f}% ± {spread:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
