"""Converter and reader: lmdb_io against the original PyTorch-LMDB algorithm and tar, side by side.

Converter throughput, random-access reads and converter peak RSS on a tree of hard links to real JPEGs,
hot page cache, contenders interleaved run by run; one Markdown table of medians. Example::

    python -m bench.convert --images 5000 --runs 3 --rss-sizes 5000,20000 --json bench/results/convert.json
"""

import argparse
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib import BenchError, data, entry, machine
from bench.lib.baseline import BaselineReader
from bench.lib.table import Row, Table, yes_no
from bench.lib.timing import peak_rss, timed

MIB = 1 << 20
RSS_LIMIT = 1 << 30
RSS_FLAT = 0.10  # the larger tree's peak RSS within 10% of the smaller's
BASELINE = "`python -m bench.lib.baseline` subprocess as users ran folder2lmdb.py: ImageFolder + DataLoader(batch 1, "
CONVERTERS = {  # name: (row label, how, target)
    "baseline": ("baseline PyTorch-LMDB", BASELINE + "2 workers) + pickle, put per image", ""),
    "tar": ("tar", "`tar --hard-dereference -cf` subprocess (no fsync)", ""),
    "ours": ("ours, default checks", "`convert.py -q` subprocess, startup included", ">= 5x vs baseline"),
}
DECODE = "`convert.py -q --verify-decode` subprocess (full Pillow decode)"
CONVERTERS["ours_verify_decode"] = ("ours, --verify-decode", DECODE, "(info)")
READS: dict[str, tuple[str, float | None]] = {"baseline": ("txn per read, get, pickle.loads", None)}  # how, target
READS["ours_verify"] = ("`db.read(i, verify=True)`: get, header parse, xxh3", 2.0)
READS["ours_noverify"] = ("`db.read(i, verify=False)`: get, header parse", 5.0)
RSS_HOW = "sum of RSS over the process tree every 20 ms (psutil; ru_maxrss cross-check)"


def converters(tree: data.Tree) -> dict[str, list[str]]:
    return {
        "baseline": [sys.executable, "-m", "bench.lib.baseline", str(tree.root)],
        "tar": ["tar", "--hard-dereference", "-cf", "OUT", "-C", str(tree.root), "."],
        "ours": data.convert_cmd(tree.root, Path("OUT")),
        "ours_verify_decode": data.convert_cmd(tree.root, Path("OUT"), "--verify-decode"),
    }


def bench_converters(tree: data.Tree, work: Path, runs: int) -> tuple[dict[str, list[float]], dict[str, Path]]:
    """Seconds per run per contender (interleaved); keeps run 0's baseline and ours databases for reads."""
    seconds: dict[str, list[float]] = defaultdict(list)
    kept: dict[str, Path] = {}
    for run in range(runs):
        for name, cmd in converters(tree).items():
            out = work / f"{name}-{run}"
            cmd = [str(out) if c == "OUT" else c for c in cmd] + ([str(out)] if name == "baseline" else [])
            data.remove(out)
            os.sync()  # no contender pays for writing back another's dirty pages
            seconds[name].append(timed(partial(data.run_checked, cmd)))
            if run == 0 and name in ("baseline", "ours"):
                kept[name] = out
            else:
                data.remove(out)
    return dict(seconds), kept


def read_all(read: Callable[[int], tuple], order: Sequence[int]) -> int:
    return sum(len(read(i)[0]) for i in order)


def bench_reads(base_path: Path, ours_path: Path, runs: int) -> tuple[dict[str, list[float]], int, int]:
    """Seconds per pass over one fixed random permutation, one thread, after an untimed pass each.
    Returns (seconds per contender, reads per pass, payload bytes per pass)."""
    import lmdb_io
    from lmdb_io.env import close_shared_env

    base, db = BaselineReader(str(base_path)), lmdb_io.open_database(ours_path)
    order = np.random.default_rng(0).permutation(len(db)).tolist()
    if len(base) != len(db) or any(base.read(i) != (bytes(db.read(i)[0]), db.read(i)[1]) for i in order[:32]):
        raise BenchError("the baseline and our database hold different records")
    readers: dict[str, Callable[[int], tuple]] = {
        "baseline": base.read,
        "ours_verify": partial(db.read, verify=True),
        "ours_noverify": partial(db.read, verify=False),
    }
    nbytes = {name: read_all(read, order) for name, read in readers.items()}  # the untimed pass
    if len(set(nbytes.values())) != 1:
        raise BenchError(f"contenders read different byte counts: {nbytes}")
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for name, read in readers.items():
            seconds[name].append(timed(partial(read_all, read, order)))
    base.close()
    close_shared_env(str(ours_path))
    return dict(seconds), len(order), nbytes["baseline"]


def converter_rows(sec: dict[str, list[float]], tree: data.Tree) -> list[Row]:
    med = {name: statistics.median(s) for name, s in sec.items()}
    rows = []
    for name, t in med.items():
        rate, speedup = tree.images / t, med["baseline"] / t
        label, how, target = CONVERTERS[name]
        row = Row(f"convert: {label}", how, f"{rate:,.0f} img/s", rate, f"{tree.nbytes / 1e6 / t:,.0f}")
        row.ratio, row.target = f"{speedup:.2f}x", target
        row.met = yes_no(speedup >= 5) if name == "ours" else ""
        rows.append(row)
    vs_tar, times = med["ours"] / med["tar"], f"{med['ours']:.2f} s / {med['tar']:.2f} s"
    row = Row("convert: ours time / tar time", "median seconds ratio", times, ratio=f"{vs_tar:.2f}x", target="<= 2x")
    row.met = yes_no(vs_tar <= 2)
    return rows[:3] + [row] + rows[3:]


def read_rows(sec: dict[str, list[float]], reads: int, nbytes: int) -> list[Row]:
    base, rows = statistics.median(sec["baseline"]), []
    for name, s in sec.items():
        t, (how, target) = statistics.median(s), READS[name]
        row = Row(f"random read: {name.replace('_', ' ')}", how, f"{reads / t:,.0f} reads/s", reads / t)
        row.mb_per_s, row.ratio = f"{nbytes / 1e6 / t:,.0f}", f"{base / t:.2f}x"
        if target:
            row.target, row.met = f">= {target:g}x vs baseline", yes_no(base / t >= target)
        rows.append(row)
    return rows


def rss_rows(rss: dict[int, tuple[int, int]]) -> list[Row]:
    first_size = min(rss)
    rows = []
    for size, (polled, maxrss) in sorted(rss.items()):
        ratio = polled / rss[first_size][0]
        ok = max(polled, maxrss) < RSS_LIMIT and (size == first_size or abs(ratio - 1) <= RSS_FLAT)
        result = f"{polled / MIB:,.0f} MiB (ru_maxrss {maxrss / MIB:,.0f})"
        row = Row(f"convert peak RSS: ours, {size} images", RSS_HOW, result, met=yes_no(ok), target="< 1 GiB")
        if size != first_size:
            row.ratio, row.target = f"{ratio:.2f}x vs {first_size}", f"< 1 GiB, within 10% of {first_size}"
        rows.append(row)
    return rows


def run(args: argparse.Namespace, work: Path) -> Table:
    load_before = os.getloadavg()[0]
    jpegs = data.find_jpegs(args.source)
    trees = {n: data.build_tree(jpegs, work / f"tree-{n}", n) for n in sorted({args.images, *args.rss_sizes})}
    for t in trees.values():
        data.warm(t.root)
    tree = trees[args.images]
    conv_sec, kept = bench_converters(tree, work, args.runs)
    read_sec, reads, read_bytes = bench_reads(kept["baseline"], kept["ours"], args.runs)
    rss = {}
    for size in args.rss_sizes:
        out = work / f"rss-{size}"
        data.remove(out)
        os.sync()
        rss[size] = peak_rss(data.convert_cmd(trees[size].root, out))
        data.remove(out)
    info = machine.describe(gpu=False)
    header = (
        f"{machine.line(info)} 1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
        f"Data: {tree.describe()} of {args.source.name} (MB = 1e6 bytes); hot page cache; median of {args.runs} runs."
    )
    rows = converter_rows(conv_sec, tree) + read_rows(read_sec, reads, read_bytes) + rss_rows(rss)
    raw: dict[str, Any] = {"machine": info, "params": {k: str(v) for k, v in vars(args).items()}}
    raw |= {"convert_seconds": conv_sec, "read_seconds": read_sec, "reads_per_pass": reads}
    raw["read_bytes_per_pass"] = read_bytes
    raw |= {"peak_rss_bytes": {str(n): {"polled_tree_rss": p, "ru_maxrss": m} for n, (p, m) in rss.items()}}
    return Table("Converter and reader: lmdb_io vs the original PyTorch-LMDB and tar", header, rows, raw)


def sizes(text: str) -> list[int]:
    return sorted({data.positive(s) for s in text.split(",") if s.strip()}) or [data.positive("")]


@entry
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=data.positive, default=5000, help="images in the throughput/read tree (5000)")
    p.add_argument("--runs", type=data.positive, default=3, help="runs per measurement; the median is reported (3)")
    p.add_argument("--rss-sizes", type=sizes, default="5000,20000", help="tree sizes of the peak-RSS runs (5000,20000)")
    data.add_common_flags(p)
    args = p.parse_args(argv)
    with data.workdir(args.workdir, "bench_convert_") as work:
        return run(args, work).report(args.json)


if __name__ == "__main__":
    sys.exit(main())
