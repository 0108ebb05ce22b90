"""Benchmark data: real JPEGs found (or generated), a tree of N hard links to them, converted to an LMDB
with convert.py, and the page cache warmed so every contender starts hot. Also the flags every suite takes."""

import argparse
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import BenchError, last_line

REPO = Path(__file__).resolve().parents[2]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
JPEG_MAGIC = b"\xff\xd8\xff"
MB = 1e6


def positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_common_flags(p: argparse.ArgumentParser, source: Path | None = HYMENOPTERA) -> None:
    p.add_argument("--source", type=Path, default=source, help=f"JPEG source tree (default {source})")
    p.add_argument("--workdir", type=Path, help="where trees, databases and runs go (default: a temp dir, deleted)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the table and every number as JSON")


@contextlib.contextmanager
def workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created), or a temp dir deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) if path is None else contextlib.nullcontext(path) as found:
        Path(found).mkdir(parents=True, exist_ok=True)
        yield Path(found)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_checked(cmd: Sequence[str]) -> None:
    """Run a command from the repo root, output discarded; ``BenchError`` with its last stderr line."""
    proc = subprocess.run(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    if proc.returncode:
        raise BenchError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {last_line(proc.stderr.decode())}")


def convert_cmd(root: Path, out: Path, *extra: str, quiet: bool = True) -> list[str]:
    return [sys.executable, "convert.py", "--dataset", str(root), "-o", str(out), *["-q"] * quiet, *extra]


def convert(root: Path, out: Path, *flags: str) -> Path:
    remove(out)
    run_checked(convert_cmd(root, out, *flags))
    return out


def find_jpegs(source: Path) -> list[Path]:
    """The real JPEG files under ``source`` (by suffix and magic bytes), sorted; GIFs and others skipped."""
    found = []
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg"):
            with open(path, "rb") as f:
                if f.read(3) == JPEG_MAGIC:
                    found.append(path)
    if not found:
        raise BenchError(f"no JPEG files under {source}")
    return found


@dataclass
class Tree:
    root: Path
    images: int
    nbytes: int
    linked: bool  # all hard links (False: copies, another file system)
    sources: int  # distinct JPEGs cycled through

    def describe(self) -> str:
        how = "hard links" if self.linked else "COPIES (hard links failed)"
        return f"{self.images:,} JPEGs ({self.nbytes / MB:,.1f} MB, {how} to {self.sources:,} files)"


def build_tree(jpegs: Sequence[Path], root: Path, n: int) -> Tree:
    """``root/<class>/<i:08d>_<name>`` for n images cycling through ``jpegs``, each in its source's class
    folder; hard links, or copies where linking fails."""
    remove(root)
    linked, nbytes = True, 0
    for i in range(n):
        src = jpegs[i % len(jpegs)]
        dst = root / src.parent.name / f"{i:08d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if linked:
            try:
                os.link(src, dst)
            except OSError:
                linked = False
        if not linked:
            shutil.copyfile(src, dst)
        nbytes += dst.stat().st_size
    return Tree(root, n, nbytes, linked, len(jpegs))


def warm(path: Path) -> None:
    """Read every file under ``path`` (or the file) once, untimed: a hot page cache for all contenders."""
    for file in [path] if path.is_file() else path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


@dataclass
class Prepared:
    db: Path
    tree: Tree

    @property
    def db_bytes(self) -> int:
        return os.path.getsize(self.db / "data.mdb")

    def describe(self) -> str:
        return f"{self.tree.describe()} in one LMDB ({self.db_bytes / MB:,.1f} MB), hot page cache"


def prepare_database(source: Path, images: int, work: Path, *flags: str, keep_tree: bool = False) -> Prepared:
    """``images`` JPEGs cycled from ``source`` by hard links, converted to ``work/train.lmdb`` (the tree
    deleted after unless ``keep_tree``: other formats are built from it), the database's pages warmed."""
    tree = build_tree(find_jpegs(source), work / "tree", images)
    db = convert(tree.root, work / "train.lmdb", *flags)
    if not keep_tree:
        remove(tree.root)
    warm(db)
    return Prepared(db, tree)


def generate_jpegs(root: Path, classes: int, per_class: int, procs: int = 1, seed: int = 0) -> Path:
    """``classes`` x about ``per_class`` JPEGs (lmdb_io.demo_images) under ``root``, by ``procs`` spawned
    processes with distinct seeds; returns ``root``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from lmdb_io.demo_images import make_image_folder

    parts = max(1, min(procs, per_class))
    if parts == 1:
        make_image_folder(str(root), classes, per_class, seed)
        return root
    each = math.ceil(per_class / parts)
    with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
        folders = [str(root / f"part{k:02d}") for k in range(parts)]
        list(pool.map(make_image_folder, folders, [classes] * parts, [each] * parts, range(seed, seed + parts)))
    return root


def demo_folder(root: Path) -> tuple[Path, Path]:
    """The demo's generated ImageFolder (4 learnable classes): 240 train and 80 val JPEGs."""
    if not (root / "train").is_dir():
        generate_jpegs(root / "train", 4, 60, seed=0)
        generate_jpegs(root / "val", 4, 20, seed=1)
    return root / "train", root / "val"
