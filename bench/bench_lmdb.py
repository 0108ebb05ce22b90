#!/usr/bin/env python3
"""Benchmark lmdb_io against the original PyTorch-LMDB algorithm and tar, side by side in one run.

Measures converter throughput, random-access reads and converter peak RSS on a tree of hard links to
real JPEGs, with a hot page cache, and prints one Markdown table (``--json FILE`` also saves the raw
numbers). Example::

    python bench/bench_lmdb.py --images 5000 --runs 3 --rss-sizes 5000,20000 --json bench/results/run.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench` and `lmdb_io` importable
    sys.path.insert(0, str(REPO))

import lmdb  # noqa: E402 (below the sys.path insert)
import numpy as np  # noqa: E402 (below the sys.path insert)
import torch  # noqa: E402 (below the sys.path insert)

import lmdb_io  # noqa: E402 (below the sys.path insert)
from bench.baseline_pytorch_lmdb import BaselineReader  # noqa: E402 (below the sys.path insert)
from bench.common import markdown_table, run_and_report, yes_no  # noqa: E402 (below the sys.path insert)
from lmdb_io.env import close_shared_env  # noqa: E402 (below the sys.path insert)

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "hymenoptera"
CONVERT_PY = REPO / "convert.py"
BASELINE_PY = REPO / "bench" / "baseline_pytorch_lmdb.py"
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_SUFFIXES = {".jpg", ".jpeg"}
MIB = 1 << 20
RSS_LIMIT = 1 << 30
RSS_FLAT_TOLERANCE = 0.10
POLL_SECONDS = 0.02
# A fresh wrapper process whose only child is the converter, so RUSAGE_CHILDREN is the converter's.
RUSAGE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


@dataclass
class Row:
    """One line of the result table."""

    what: str
    how: str
    result: str
    mb_per_s: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


@dataclass
class Tree:
    """A benchmark ImageFolder tree: its root, image count, total input bytes and how it was made."""

    root: Path
    images: int
    nbytes: int
    linked: bool


# -- dataset ----------------------------------------------------------------------------------------


def remove(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def find_jpegs(source: Path) -> list[Path]:
    """The real JPEG files under ``source`` (by suffix and magic bytes), sorted; GIFs and others skipped."""
    found = []
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.suffix.lower() in JPEG_SUFFIXES:
            with open(path, "rb") as f:
                if f.read(3) == JPEG_MAGIC:
                    found.append(path)
    if not found:
        raise SystemExit(f"no JPEG files under {source}")
    return found


def build_tree(jpegs: Sequence[Path], root: Path, n: int) -> Tree:
    """``root/<class>/<i:08d>_<name>`` for n images cycling through ``jpegs``, each in its source's
    class folder; hard links, or copies where linking fails (another file system)."""
    remove(root)
    linked = True
    nbytes = 0
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
    return Tree(root, n, nbytes, linked)


def warm_up(tree: Tree) -> None:
    """Read every file once, untimed, so all contenders start with a hot page cache."""
    for path in tree.root.rglob("*"):
        if path.is_file():
            path.read_bytes()


# -- running and timing -----------------------------------------------------------------------------


def run_checked(cmd: Sequence[str]) -> None:
    """Run a command, output discarded; fail loudly with its stderr."""
    proc = subprocess.run(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def convert_cmd(tree: Tree, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(CONVERT_PY), "--dataset", str(tree.root), "-o", str(out), "-q", *extra]


# -- 1. converter throughput ------------------------------------------------------------------------


def converters(tree: Tree) -> dict[str, Callable[[Path], None]]:
    """Each contender: a function converting ``tree`` into a fresh output path."""
    return {
        "baseline": lambda out: run_checked([sys.executable, str(BASELINE_PY), str(tree.root), str(out)]),
        "tar": lambda out: run_checked(["tar", "--hard-dereference", "-cf", str(out), "-C", str(tree.root), "."]),
        "ours": lambda out: run_checked(convert_cmd(tree, out)),
        "ours_verify_decode": lambda out: run_checked(convert_cmd(tree, out, "--verify-decode")),
    }


def bench_converters(tree: Tree, workdir: Path, runs: int) -> tuple[dict[str, list[float]], dict[str, Path]]:
    """Seconds per run for each contender (interleaved run by run); keeps run 0's databases for reads."""
    seconds: dict[str, list[float]] = defaultdict(list)
    kept: dict[str, Path] = {}
    for run in range(runs):
        for name, convert in converters(tree).items():
            out = workdir / f"{name}-{run}" if name != "tar" else workdir / f"tar-{run}.tar"
            remove(out)
            os.sync()  # start clean: no contender pays for writing back another's dirty pages
            seconds[name].append(timed(partial(convert, out)))
            if run == 0 and name in ("baseline", "ours"):
                kept[name] = out
            else:
                remove(out)
    return dict(seconds), kept


# -- 2. random-access reads -------------------------------------------------------------------------


def read_all(read: Callable[[int], tuple], order: Sequence[int]) -> int:
    """Read every index in ``order``; returns the payload bytes seen."""
    total = 0
    for i in order:
        payload, _ = read(i)
        total += len(payload)
    return total


def check_same_records(base: BaselineReader, db: lmdb_io.ImageDatabase, order: Sequence[int]) -> None:
    """Both databases must hold the same images under the same indices, or the comparison is moot."""
    if len(base) != len(db):
        raise SystemExit(f"baseline DB holds {len(base)} images, ours {len(db)}")
    for i in order[:32]:
        raw, label = base.read(i)
        payload, our_label = db.read(i)
        if raw != bytes(payload) or label != our_label:
            raise SystemExit(f"index {i}: the baseline and our database hold different records")


def bench_reads(base_path: Path, ours_path: Path, runs: int, seed: int = 0) -> tuple[dict[str, list[float]], int, int]:
    """Seconds per pass over one fixed random permutation, single thread, after one untimed pass each.

    Returns (seconds per contender, reads per pass, payload bytes per pass)."""
    base = BaselineReader(str(base_path))
    db = lmdb_io.open_database(ours_path)
    order = np.random.default_rng(seed).permutation(len(db)).tolist()
    check_same_records(base, db, order)
    readers: dict[str, Callable[[int], tuple]] = {
        "baseline": base.read,
        "ours_verify": partial(db.read, verify=True),
        "ours_noverify": partial(db.read, verify=False),
    }
    nbytes = {name: read_all(read, order) for name, read in readers.items()}  # warm-up pass
    if len(set(nbytes.values())) != 1:
        raise SystemExit(f"contenders read different byte counts: {nbytes}")
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for name, read in readers.items():
            seconds[name].append(timed(partial(read_all, read, order)))
    base.close()
    close_shared_env(str(ours_path))
    return dict(seconds), len(order), nbytes["baseline"]


# -- 3. converter peak RSS --------------------------------------------------------------------------


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from every /proc/<pid>/stat (this kernel has no /proc/.../children)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        children[int(stat.rsplit(b")", 1)[1].split()[1])].append(int(entry.name))
    return children


def vm_rss(pid: int) -> int:
    """Resident bytes of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants_rss(pid: int) -> int:
    """Summed VmRSS of every descendant of ``pid`` (not ``pid`` itself)."""
    children = children_map()
    stack = list(children.get(pid, ()))
    total = 0
    while stack:
        child = stack.pop()
        total += vm_rss(child)
        stack.extend(children.get(child, ()))
    return total


def peak_rss(cmd: Sequence[str]) -> tuple[int, int]:
    """Run ``cmd`` under a fresh wrapper; returns (peak summed VmRSS of its process tree, polled every
    ~20 ms; the wrapper's RUSAGE_CHILDREN ru_maxrss), both in bytes."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUSAGE_WRAPPER, *cmd], stdout=subprocess.PIPE, stderr=err, cwd=REPO
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, descendants_rss(proc.pid))
            time.sleep(POLL_SECONDS)
        assert proc.stdout is not None  # stdout=PIPE
        out = proc.stdout.read()
        proc.stdout.close()
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return peak, int(out.split()[-1]) * 1024


def bench_rss(trees: dict[int, Tree], workdir: Path) -> dict[int, tuple[int, int]]:
    """Peak RSS of one default conversion per tree size."""
    result = {}
    for size, tree in sorted(trees.items()):
        out = workdir / f"rss-{size}"
        remove(out)
        os.sync()
        result[size] = peak_rss(convert_cmd(tree, out))
        remove(out)
    return result


# -- report -----------------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": models[0] if models else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "py_lmdb": lmdb.__version__,
        "liblmdb": ".".join(map(str, lmdb.version())),
        "torch": torch.__version__,
        "lmdb_io": lmdb_io.__version__,
    }


def converter_rows(sec: dict[str, list[float]], tree: Tree) -> list[Row]:
    med = {name: statistics.median(s) for name, s in sec.items()}
    rate = {name: (tree.images / t, tree.nbytes / 1e6 / t) for name, t in med.items()}
    speedup = med["baseline"] / med["ours"]
    vs_tar = med["ours"] / med["tar"]

    def row(name: str, what: str, how: str, **kw: str) -> Row:
        return Row(
            what,
            how,
            f"{rate[name][0]:,.0f} img/s",
            f"{rate[name][1]:,.0f}",
            f"{med['baseline'] / med[name]:.2f}x",
            **kw,
        )

    return [
        row(
            "baseline",
            "convert: baseline PyTorch-LMDB",
            "`baseline_pytorch_lmdb.py` subprocess as users ran folder2lmdb.py: ImageFolder + DataLoader(batch 1, "
            "2 workers) + pickle, put per image",
        ),
        row("tar", "convert: tar", "`tar --hard-dereference -cf` subprocess (no fsync)"),
        row(
            "ours",
            "convert: ours, default checks",
            "`convert.py -q` subprocess, startup included",
            target=">= 5x vs baseline",
            met=yes_no(speedup >= 5),
        ),
        Row(
            "convert: ours time / tar time",
            "median seconds ratio",
            f"{med['ours']:.2f} s / {med['tar']:.2f} s",
            "",
            f"{vs_tar:.2f}x",
            "<= 2x",
            yes_no(vs_tar <= 2),
        ),
        row(
            "ours_verify_decode",
            "convert: ours, --verify-decode",
            "`convert.py -q --verify-decode` subprocess (full Pillow decode)",
            target="(info)",
        ),
    ]


def read_rows(sec: dict[str, list[float]], reads: int, nbytes: int) -> list[Row]:
    med = {name: statistics.median(s) for name, s in sec.items()}
    targets = {"ours_verify": 2.0, "ours_noverify": 5.0}
    hows = {
        "baseline": "txn per read, get, pickle.loads",
        "ours_verify": "`db.read(i, verify=True)`: get, header parse, xxh3",
        "ours_noverify": "`db.read(i, verify=False)`: get, header parse",
    }
    rows = []
    for name, t in med.items():
        ratio = med["baseline"] / t
        target = targets.get(name)
        rows.append(
            Row(
                f"random read: {name.replace('_', ' ')}",
                hows[name],
                f"{reads / t:,.0f} reads/s",
                f"{nbytes / 1e6 / t:,.0f}",
                f"{ratio:.2f}x",
                f">= {target:g}x vs baseline" if target else "",
                yes_no(ratio >= target) if target else "",
            )
        )
    return rows


def rss_rows(rss: dict[int, tuple[int, int]]) -> list[Row]:
    sizes = sorted(rss)
    first = rss[sizes[0]][0]
    rows = []
    for size in sizes:
        polled, maxrss = rss[size]
        ratio = polled / first
        flat = abs(ratio - 1) <= RSS_FLAT_TOLERANCE
        ok = max(polled, maxrss) < RSS_LIMIT and (size == sizes[0] or flat)
        rows.append(
            Row(
                f"convert peak RSS: ours, {size} images",
                "sum of VmRSS over the process tree every 20 ms (ru_maxrss cross-check)",
                f"{polled / MIB:,.0f} MiB (ru_maxrss {maxrss / MIB:,.0f})",
                "",
                f"{ratio:.2f}x vs {sizes[0]}" if size != sizes[0] else "",
                "< 1 GiB" + ("" if size == sizes[0] else f", within 10% of {sizes[0]}"),
                yes_no(ok),
            )
        )
    return rows


def render(rows: Sequence[Row], title: str) -> str:
    return markdown_table(
        title, ["what", "how", "result", "MB/s", "ratio", "target", "met"], (asdict(r).values() for r in rows)
    )


def header(info: dict[str, object], tree: Tree, runs: int) -> str:
    how = "hard links" if tree.linked else "COPIES (hard links failed: another file system)"
    return (
        f"### lmdb_io benchmark\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
        f"{info['memory_gib']} GiB RAM, Linux {info['kernel']}; Python {info['python']}, "
        f"py-lmdb {info['py_lmdb']} (LMDB {info['liblmdb']}), torch {info['torch']}, "
        f"lmdb_io {info['lmdb_io']}; 1-min load average {info['load_1min_before']:.2f} before the run, "
        f"{info['load_1min_after']:.2f} after.\n"
        f"Dataset: {tree.images} JPEGs ({tree.nbytes / 1e6:,.1f} MB, MB = 1e6 bytes) made of {how}; "
        f"hot page cache; median of {runs} runs."
    )


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000, help="images in the throughput/read tree (default 5000)")
    p.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported (default 3)")
    p.add_argument("--rss-sizes", default="5000,20000", help="tree sizes for the peak-RSS runs (default 5000,20000)")
    p.add_argument("--workdir", type=Path, help="where trees and outputs go (default: a temp dir, deleted after)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"JPEG source tree (default {DEFAULT_SOURCE})")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write all numbers as JSON")
    args = p.parse_args(argv)
    args.rss_sizes = sorted({int(s) for s in args.rss_sizes.split(",") if s.strip()})
    if args.images < 1 or args.runs < 1 or not args.rss_sizes or min(args.rss_sizes) < 1:
        p.error("--images, --runs and --rss-sizes must be positive")
    return args


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    jpegs = find_jpegs(args.source)
    trees = {n: build_tree(jpegs, workdir / f"tree-{n}", n) for n in sorted({args.images, *args.rss_sizes})}
    tree = trees[args.images]
    for t in trees.values():
        warm_up(t)
    conv_sec, kept = bench_converters(tree, workdir, args.runs)
    read_sec, reads, read_bytes = bench_reads(kept["baseline"], kept["ours"], args.runs)
    for path in kept.values():
        remove(path)
    rss = bench_rss({n: trees[n] for n in args.rss_sizes}, workdir)
    info = {**machine(), "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}
    rows = converter_rows(conv_sec, tree) + read_rows(read_sec, reads, read_bytes) + rss_rows(rss)
    return {
        "machine": info,
        "table": render(rows, header(info, tree, args.runs)),
        "params": {
            "images": args.images,
            "runs": args.runs,
            "rss_sizes": args.rss_sizes,
            "source": str(args.source),
            "source_jpegs": len(jpegs),
            "input_bytes": tree.nbytes,
            "hard_links": all(t.linked for t in trees.values()),
        },
        "convert_seconds": conv_sec,
        "read_seconds": read_sec,
        "reads_per_pass": reads,
        "read_bytes_per_pass": read_bytes,
        "peak_rss_bytes": {str(n): {"polled_tree_vmrss": p, "ru_maxrss": m} for n, (p, m) in rss.items()},
        "rows": [asdict(r) for r in rows],
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_and_report(run_benchmark, parse_args(argv), "bench_lmdb_")


if __name__ == "__main__":
    sys.exit(main())
