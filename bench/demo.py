"""`make demo`: data -> LMDB -> train with both loaders -> one comparison table.

Without ``--data`` it generates a small learnable ImageFolder of JPEGs (lmdb_io.demo_images), so a new
user needs no dataset. ``--data DIR`` takes a real ImageFolder tree; with ``train/`` and ``val/``
subfolders they are used as such, else DIR is used for both. On a GPU the demo trains at 224 px; on the
CPU at 112 px (``--crop``) so it ends in a few minutes.
"""

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.lib import data, entry, ours, runlog
from bench.lib.table import Row, Table


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
    subprocess.run(cmd, cwd=data.REPO, check=True)


def convert(train_dir: Path, val_dir: Path, work: Path) -> tuple[Path, Path]:
    from lmdb_dali_train.cli import lmdb_io_main

    train_db, val_db = work / "train.lmdb", work / "val.lmdb"
    run(data.convert_cmd(train_dir, train_db, "--overwrite", "--report", str(work / "convert-train.json"), quiet=False))
    run(data.convert_cmd(val_dir, val_db, "--overwrite", "--classes-from", str(train_db), quiet=False))
    lmdb_io_main(["info", str(train_db)])
    return train_db, val_db


def loader_only(kind: str, db: Path, batch: int, crop: int, epochs: int = 2) -> float:
    """Images/s of the training loader alone over two epochs, the first batch (start-up) left out; both loaders
    end on the same device (the torchvision one normalises there), which finishes its work before each clock read."""
    gpu = torch.cuda.is_available()
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    device = {"device": torch.device("cuda" if gpu else "cpu")}
    options = {"device_id": 0 if gpu else None} if kind == "dali" else {"workers": 2, **device}
    loader = ours.loader(kind, db, batch, crop, **options)(0)
    images, started = 0, None
    for _ in range(epochs):
        for b in loader:
            if started is None:
                sync()
                started = time.perf_counter()
            else:
                images += b.images.shape[0]
    sync()
    assert started is not None, "the loader yielded no batch"
    return images / (time.perf_counter() - started)


def train(kind: str, dbs: tuple[Path, Path], work: Path, args: argparse.Namespace) -> Row:
    flags = runlog.fit_flags(kind, dbs, args.arch, args)
    flags += ["--warmup-epochs", "0.5"]
    print(f"$ {sys.executable} train.py {' '.join(flags)} --output-dir {work / f'run-{kind}'}", flush=True)
    row = runlog.train_row(kind, flags, work / f"run-{kind}")
    val = runlog.events(work / f"run-{kind}" / "log.jsonl", "val")
    row.target = f"{val[-1]['top1']:.1f}%" if val else "n/a"
    run([sys.executable, "-m", "lmdb_dali_train.plot", str(work / f"run-{kind}")])
    return row


@entry
def main(argv: Sequence[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="an ImageFolder tree (default: generate one)")
    p.add_argument("--work", type=Path, default=Path("demo-data"), help="where data, databases and runs go (demo-data)")
    p.add_argument("--arch", default="resnet18", help="torchvision model (default resnet18)")
    p.add_argument("--epochs", type=data.positive, default=3, help="epochs (default 3)")
    p.add_argument("--batch", type=data.positive, default=64 if gpu else 32, help="batch size (64 on a GPU, else 32)")
    p.add_argument("--crop", type=data.positive, default=224 if gpu else 112, help="crop (224 on a GPU, else 112)")
    p.add_argument("--lr", type=float, default=0.2, help="learning rate for a batch of 256, scaled (default 0.2)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        folders = data.demo_folder(args.work / "images")
    else:
        split = (args.data / "train").is_dir() and (args.data / "val").is_dir()
        folders = (args.data / "train", args.data / "val") if split else (args.data, args.data)
    dbs = convert(*folders, args.work)
    no_dali = dali_missing()
    rows = []
    for kind in ("torch",) if no_dali else ("dali", "torch"):
        only = loader_only(kind, dbs[0], args.batch, args.crop)
        rows.append(train(kind, dbs, args.work, args))
        rows[-1].how = f"{only:,.0f}"
    device = torch.cuda.get_device_name() if gpu else "CPU"
    title = f"demo: {args.arch}, {args.epochs} epochs, batch {args.batch}, crop {args.crop} px, on {device}"
    headings = {"what": "loader", "how": "loader-only img/s", "result": "training img/s", "target": "final val top-1"}
    print("\n" + Table(title, f"Training images/s and data-wait: {runlog.RULE}", rows, headings=headings).markdown())
    if no_dali:
        print(f"\nDALI rows skipped: {no_dali}")
    print(f"\n(demo took {time.perf_counter() - started:.0f} s)")
    for kind in ("torch",) if no_dali else ("dali", "torch"):
        folder = args.work / f"run-{kind}"
        files = ", ".join(sorted(p.name for p in folder.iterdir() if not p.name.startswith(("std", "events."))))
        print(f"run folder {folder}: {files}")
    print(f"watch runs live with: tensorboard --logdir {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
