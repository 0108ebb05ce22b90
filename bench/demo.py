#!/usr/bin/env python3
"""`make demo`: data -> LMDB -> train with both loaders -> one comparison table.

With no ``--data`` it generates a small learnable ImageFolder of JPEGs (lmdb_io.synthetic), so a new
user needs no dataset. ``--data DIR`` takes a real ImageFolder tree; if DIR has ``train/`` and ``val/``
subfolders they are used as such, else DIR is used for both. On a GPU the demo trains at 224 px; on
the CPU at 112 px (``--crop``) so it ends in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402 (below the sys.path insert)

from lmdb_io.synthetic import make_image_folder  # noqa: E402 (needs the sys.path insert above)


def dali_missing() -> str | None:
    """Why the DALI rows cannot run here (one line), or None when DALI imports."""
    where = (platform.system(), platform.machine())
    if where not in {("Linux", "x86_64"), ("Linux", "aarch64")}:
        return f"DALI is not available on this platform ({' '.join(where)}; its wheels exist for Linux x86_64/aarch64)"
    try:
        import nvidia.dali  # noqa: F401 (imported only to learn whether it imports)
    except ImportError as exc:
        return f"DALI is not installed ({exc}); pip install '.[cuda130]' (NVIDIA driver >= 580 or no GPU)"
    return None


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def prepare_data(data: str | None, work: Path) -> tuple[Path, Path]:
    if data is None:
        root = work / "images"
        make_image_folder(str(root / "train"), classes=4, per_class=60, seed=0)
        make_image_folder(str(root / "val"), classes=4, per_class=20, seed=1)
        return root / "train", root / "val"
    root = Path(data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / "train", root / "val"
    return root, root


def convert(train_dir: Path, val_dir: Path, work: Path) -> tuple[Path, Path]:
    train_db, val_db = work / "train.lmdb", work / "val.lmdb"
    run(
        [
            sys.executable,
            "convert.py",
            "--dataset",
            str(train_dir),
            "-o",
            str(train_db),
            "--overwrite",
            "--report",
            str(work / "convert-train.json"),
        ]
    )
    run(
        [
            sys.executable,
            "convert.py",
            "--dataset",
            str(val_dir),
            "-o",
            str(val_db),
            "--overwrite",
            "--classes-from",
            str(train_db),
        ]
    )
    run([sys.executable, "-m", "lmdb_io", "info", str(train_db)])
    return train_db, val_db


def loader_only(kind: str, db: Path, batch: int, crop: int, epochs: int = 2) -> float:
    """Images/s of the training loader alone, first batch (start-up) excluded."""
    loader: Iterable[Any]  # DALILoader or TorchLoader: both yield lmdb_io.batch.Batch
    if kind == "dali":
        from dali_pipeline import make_dali_loader

        loader = make_dali_loader(db, batch, train=True, crop=crop, device_id=0 if torch.cuda.is_available() else None)
    else:
        from lmdb_io.torch_loader import make_torch_loader

        loader = make_torch_loader(db, batch, train=True, crop=crop, workers=2)
    images, started = 0, None
    for _ in range(epochs):
        for batch_data in loader:
            if started is None:
                started = time.perf_counter()
                continue
            images += batch_data.images.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    assert started is not None, "the loader yielded no batch"
    return images / (time.perf_counter() - started)


def train(kind: str, train_db: Path, val_db: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"run-{kind}"
    run(
        [
            sys.executable,
            "train.py",
            "--loader",
            kind,
            "--lmdb",
            "--train",
            str(train_db),
            "--val",
            str(val_db),
            "-a",
            args.arch,
            "--epochs",
            str(args.epochs),
            "-b",
            str(args.batch),
            "--crop-size",
            str(args.crop),
            "--val-resize",
            str(args.crop * 8 // 7),
            "--lr",
            str(args.lr),
            "--warmup-epochs",
            "0.5",
            "--output-dir",
            str(out),
            "--print-freq",
            "5",
        ]
    )
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "train"][1:] or [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    return {
        "train_img_s": sum(e["images_per_s"] for e in steps) / len(steps),
        "data_wait": sum(e["data_wait"] for e in steps) / len(steps),
        "top1": val[-1]["top1"] if val else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="an ImageFolder tree (default: generate one)")
    p.add_argument("--work", default="demo-data", help="where data, databases and runs go (default demo-data)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64 if gpu else 32)
    p.add_argument("--crop", type=int, default=224 if gpu else 112)
    p.add_argument("--lr", type=float, default=0.2)
    args = p.parse_args(argv)
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_db, val_db = convert(*prepare_data(args.data, work), work)
    rows = []
    no_dali = dali_missing()
    for kind in ("torch",) if no_dali else ("dali", "torch"):
        only = loader_only(kind, train_db, args.batch, args.crop)
        rows.append((kind, only, train(kind, train_db, val_db, work, args)))
    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"\n### demo: {args.arch}, {args.epochs} epochs, batch {args.batch}, crop {args.crop} px, on {device}\n")
    print("| loader | loader-only img/s | training img/s | data-wait | final val top-1 |")
    print("|---|---|---|---|---|")
    for kind, only, result in rows:
        print(
            f"| {kind} | {only:,.0f} | {result['train_img_s']:,.1f} | {100 * result['data_wait']:.0f}% | "
            f"{result['top1']:.1f}% |"
        )
    if no_dali:
        print(f"\nDALI rows skipped: {no_dali}")
    print(f"\n(demo took {time.perf_counter() - started:.0f} s; logs in {work}/run-*/log.jsonl)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
