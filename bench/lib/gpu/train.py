"""The training rows: images/s and data-wait of each ``--archs`` model through train.py (``-b --amp bf16
--channels-last``) with ``--synthetic``, ``--loader dali --lmdb`` and ``--loader torch --lmdb``, read with
bench.lib.runlog's one warm-up rule."""

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from .. import runlog
from . import Check, check
from .probe import Data

LABELS = {"synthetic": "synthetic", "dali": "DALI loader", "torch": "torchvision loader"}
NEEDS = {"synthetic": (), "dali": ("db", "dali"), "torch": ("db",)}


def rows(args: argparse.Namespace, d: Data) -> list[Check]:
    found = []
    for arch, variant in ((a, v) for a in args.archs for v in LABELS):
        needs = ("torch", "gpu", "torchvision", "lmdb", arch, *NEEDS[variant])
        how = "`train.py " + " ".join(train_flags(args, arch, variant, Path("DB"))) + "`"
        measure = partial(time_training, args, d, arch, variant)
        what = f"training {arch}, {LABELS[variant]}"
        found.append(check(args, "train", f"{arch}-{variant}", what, how, needs, measure))
    return found


def train_flags(args: argparse.Namespace, arch: str, variant: str, db: Path | None) -> list[str]:
    flags = ["-a", arch, "-b", str(args.batch), "--crop-size", str(args.crop), "--amp", "bf16", "--channels-last"]
    flags += ["--max-steps", str(args.steps), "--print-freq", str(args.print_freq)]
    flags += ["--device", "cpu" if args.cpu else "cuda", *runlog.variant_flags(variant, db)]
    if variant == "dali":
        return flags + ["--dali-threads", str(args.dali_threads), "--hw-decoder-load", f"{args.hw_decoder_load:g}"]
    return flags + ["-j", str(args.torch_workers)] * (variant == "torch")


def time_training(args: argparse.Namespace, d: Data, arch: str, variant: str, left: float) -> dict[str, Any]:
    out = d.work / "runs" / f"{arch}-{variant}"
    s = runlog.steady(runlog.run_train(train_flags(args, arch, variant, d.db), out, left))
    return {"rate": s.images_per_s, "data_wait": s.data_wait, "steps": s.steps}
