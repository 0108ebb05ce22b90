#!/usr/bin/env python3
"""Benchmark the DALI CPU train pipeline against the torchvision DataLoader, loader only, side by side.

On real JPEGs (hymenoptera replicated by hard links) converted to one LMDB, with a hot page cache, it
times one train epoch per contender per run (no model; the first ``--warmup-batches`` batches of each
run untimed), interleaving the contenders run by run, each on a freshly built loader, and prints one
Markdown table of medians (``--json FILE`` also saves the raw numbers). It watches /proc/stat: a run
during which other processes took more than ``--max-foreign`` of the CPUs is disturbed and replaced
by another (up to ``--extra-runs``), and the header says so. Contenders: the DALI CPU
pipeline with the LMDB source in the pipeline's thread and in Python workers, the torchvision
DataLoader with as many workers as cores, and the same DALI graph fed the same JPEG bytes from memory
(the LMDB source's cost). Example::

    python bench/bench_loaders.py --images 2048 --runs 3 --batch 64 --json bench/results/loaders.json
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `lmdb_io` and `dali_pipeline` importable
    sys.path.insert(0, str(REPO))

from bench.common import markdown_table, run_and_report, yes_no  # noqa: E402 (below the sys.path insert)
from dali_pipeline.source import ShardedSource  # noqa: E402 (below the sys.path insert; needs no DALI)
from lmdb_io.shard import epoch_plan  # noqa: E402 (below the sys.path insert; numpy only)

# torch, DALI and bench.bench_lmdb are imported inside functions: DALI's parallel source starts its
# workers with spawn, which re-imports this module in each of them; they need only MemorySource.

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "hymenoptera"
MB = 1e6


# -- the in-memory source ---------------------------------------------------------------------------


class MemorySource(ShardedSource):
    """``dali_pipeline.LMDBSource`` over encoded images held in memory: the same plan and sample order
    (both are ``ShardedSource``), without the LMDB transaction, the record header or the checksum."""

    def __init__(self, payloads: Sequence[np.ndarray], labels: Sequence[int], batch_size: int, **kwargs: Any) -> None:
        if len(payloads) != len(labels):
            raise ValueError(f"{len(payloads)} payloads but {len(labels)} labels")
        self.payloads = list(payloads)
        self.labels = [int(label) for label in labels]
        super().__init__(len(self.payloads), batch_size, **kwargs)

    @classmethod
    def from_database(cls, path: str | os.PathLike, batch_size: int, **kwargs: Any) -> MemorySource:
        """Every record's encoded bytes read once (checksums verified) from an lmdb_io database."""
        from lmdb_io.database import ImageDatabase

        db = ImageDatabase(path, verify=True)
        payloads = [np.frombuffer(db.read(i)[0], dtype=np.uint8).copy() for i in range(len(db))]
        return cls(payloads, db.targets.tolist(), batch_size, **kwargs)

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.payloads)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        return self.payloads[index], self.labels[index]


def memory_source_class() -> type[MemorySource]:
    """MemorySource imported under its module name, so that it pickles by reference into spawned DALI
    workers even when this file runs as ``__main__``."""
    from bench.bench_loaders import MemorySource as imported

    return imported


class _SampleInfo:
    """The two fields of ``nvidia.dali.types.SampleInfo`` that the sources read."""

    def __init__(self, idx_in_epoch: int, epoch_idx: int) -> None:
        self.idx_in_epoch, self.epoch_idx = idx_in_epoch, epoch_idx


def check_same_samples(a: Callable, b: Callable, count: int, epochs: Sequence[int] = (0, 1)) -> None:
    """Two sources must return the same bytes, labels, indices and masks for the same sample infos."""
    for epoch in epochs:
        for i in range(count):
            info = _SampleInfo(i, epoch)
            for name, x, y in zip(("bytes", "label", "index", "real"), a(info), b(info), strict=True):
                if not np.array_equal(np.asarray(x), np.asarray(y)):
                    raise SystemExit(f"sources differ at epoch {epoch}, sample {i}: {name}")


def time_source(source: Callable, samples: int, repeats: int = 3) -> float:
    """Median seconds per call of ``source`` over one epoch's first ``samples`` samples, single thread."""
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(samples):
            source(_SampleInfo(i, 0))
        per_call.append((time.perf_counter() - started) / samples)
    return statistics.median(per_call)


# -- timing -----------------------------------------------------------------------------------------

CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")


def _proc_cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process (its reaped children included); 0 once gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])


def cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds the whole machine spent busy, CPU seconds of this process tree), both cumulative.

    The tree is this process, its live descendants and (through cutime) the reaped ones, so a worker
    that exits mid-epoch keeps counting. Their difference over an epoch is what other processes took.
    """
    from bench.bench_lmdb import children_map

    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    machine = (user + nice + system + irq + softirq + steal) * CLOCK_TICK  # steal: taken by the host
    children = children_map()
    stack, ticks = [os.getpid()], 0
    while stack:
        pid = stack.pop()
        ticks += _proc_cpu_ticks(pid)
        stack.extend(children.get(pid, ()))
    return machine, ticks * CLOCK_TICK


@dataclass
class EpochTiming:
    """One timed epoch, counted after the warm-up batches: images, seconds, the CPU seconds this
    process tree used and those other processes (or the host, as steal) took meanwhile."""

    batches: int
    images: int
    seconds: float
    own_cpu: float
    foreign_cpu: float
    indices: list[int]

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def cores_used(self) -> float:
        return self.own_cpu / self.seconds

    def foreign_share(self, cores: int) -> float:
        """Share of the machine's CPU capacity that others took during the timed part."""
        return max(self.foreign_cpu, 0.0) / (self.seconds * cores)


def time_epoch(loader: Iterable, batch_size: int, warmup: int, sync: Callable[[], None] | None = None) -> EpochTiming:
    """Iterate one epoch; the clock starts on receiving batch ``warmup`` (1-based) and stops on
    receiving the last one, each time after ``sync()`` (e.g. ``torch.cuda.synchronize``) where given.
    Only those two batches sync and read /proc, when the loader has a length; otherwise every batch."""
    if warmup < 1:
        raise ValueError("warmup must be at least 1 batch (the clock starts on receiving one)")
    started = last = None
    cpu_start = cpu_last = (0.0, 0.0)
    batches = images = 0
    total = len(loader) if isinstance(loader, Sized) else None  # snapshot /proc at the ends only
    indices: list[int] = []
    for batch in loader:
        batches += 1
        if len(batch.labels) != batch_size:
            raise SystemExit(f"batch {batches} holds {len(batch.labels)} samples, not {batch_size}")
        indices += batch.indices.tolist()
        if batches > warmup:
            images += batch_size
        if batches == warmup or batches == total or (total is None and batches > warmup):
            if sync is not None:
                sync()
            last = time.perf_counter()
            cpu_last = cpu_snapshot()
            if batches == warmup:
                started, cpu_start = last, cpu_last
    if started is None or images == 0:
        raise SystemExit(
            f"an epoch of {batches} batches leaves none to time after {warmup} warm-up batches; "
            f"use more images or a smaller batch"
        )
    if total is not None and batches != total:
        raise SystemExit(f"the loader announced {total} batches and delivered {batches}")
    assert last is not None  # set with started
    own = cpu_last[1] - cpu_start[1]
    return EpochTiming(batches, images, last - started, own, cpu_last[0] - cpu_start[0] - own, indices)


def wait_for_quiet(cores: int, max_foreign: float, timeout: float, interval: float = 1.0) -> float:
    """Sleep until other processes take at most ``max_foreign`` of the CPUs over one ``interval``, or
    ``timeout`` seconds have passed; returns their share over the last interval."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_snapshot()
        time.sleep(interval)
        after = cpu_snapshot()
        share = max((after[0] - before[0]) - (after[1] - before[1]), 0.0) / (interval * cores)
        if share <= max_foreign or time.monotonic() >= deadline:
            return share


@dataclass
class Contender:
    """One loader configuration: ``make(seed)`` builds a fresh loader."""

    key: str
    what: str
    how: str
    make: Callable[[int], Iterable]


@dataclass
class Rounds:
    """Every round run (``timings[key][round]``), which rounds count, and the rule that chose them."""

    timings: dict[str, list[EpochTiming]]
    used: list[int]
    disturbed: list[int]
    max_foreign: float

    def used_timings(self, key: str) -> list[EpochTiming]:
        return [self.timings[key][r] for r in self.used]

    def median_rate(self, key: str) -> float:
        return statistics.median(t.rate for t in self.used_timings(key))

    def median_ratio(self, num: str, den: str) -> float:
        """Median over the counted rounds of the per-round rate ratio (both measured minutes apart at most)."""
        return statistics.median(self.timings[num][r].rate / self.timings[den][r].rate for r in self.used)


def run_rounds(
    contenders: Sequence[Contender],
    runs: int,
    batch_size: int,
    warmup: int,
    expected: Callable[[int], list[int]],
    *,
    cores: int,
    max_foreign: float = 1.0,
    extra_runs: int = 0,
    quiet_wait: float = 0.0,
    sync: Callable[[], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Rounds:
    """Rounds of one timed epoch per contender, each on a loader built afresh (seed = round) and deleted
    (stopping its threads, workers and next-epoch prefetch) before the next contender starts.

    A round where other processes took more than ``max_foreign`` of the CPUs during any contender's
    timed epoch is disturbed; up to ``extra_runs`` more rounds replace disturbed ones, and each round
    first waits up to ``quiet_wait`` seconds for the others to go below that share. The result counts
    the first ``runs`` undisturbed rounds, or every round if there are not that many. Every epoch must
    deliver ``expected(seed)``, the plan's indices, so all contenders do the same work.
    """
    timings: dict[str, list[EpochTiming]] = {c.key: [] for c in contenders}
    clean: list[int] = []
    disturbed: list[int] = []
    for run in range(runs + extra_runs):
        if len(clean) == runs:
            break
        worst = 0.0
        if quiet_wait > 0:
            share = wait_for_quiet(cores, max_foreign, quiet_wait)
            log(f"round {run + 1}: others take {share:.0%} of the CPUs before it starts")
        for c in contenders:
            loader = c.make(run)
            timing = time_epoch(loader, batch_size, warmup, sync)
            del loader
            gc.collect()
            if timing.indices != expected(run):
                raise SystemExit(f"{c.key}: round {run} delivered other samples than the epoch plan")
            timings[c.key].append(timing)
            worst = max(worst, timing.foreign_share(cores))
            log(
                f"round {run + 1} {c.key}: {timing.rate:,.1f} img/s, {timing.cores_used:.2f} cores used, "
                f"others took {timing.foreign_share(cores):.0%} of the CPUs"
            )
        (clean if worst <= max_foreign else disturbed).append(run)
    used = clean if len(clean) == runs else sorted(clean + disturbed)
    return Rounds(timings, used, disturbed, max_foreign)


# -- report -----------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    how: str
    images_per_s: str
    ratio: str = ""
    target: str = ""
    met: str = ""


def render(rows: Sequence[Row], title: str) -> str:
    return markdown_table(
        title, ["what", "how", "images/s", "ratio", "target", "met"], (asdict(r).values() for r in rows)
    )


def versions() -> dict[str, str]:
    import PIL
    import torchvision
    from nvidia import dali

    return {"torchvision": torchvision.__version__, "dali": dali.__version__, "pillow": PIL.__version__}


# -- the benchmark ----------------------------------------------------------------------------------


def prepare_database(source: Path, images: int, workdir: Path) -> tuple[Path, int, int, bool]:
    """Replicate ``source``'s JPEGs by hard links to ``images`` files and convert them; returns the
    database path, the JPEG count in ``source``, the input bytes and whether all were hard links."""
    from bench.bench_lmdb import build_tree, convert_cmd, find_jpegs, run_checked

    jpegs = find_jpegs(source)
    tree = build_tree(jpegs, workdir / "tree", images)
    db = workdir / "train.lmdb"
    run_checked(convert_cmd(tree, db))
    shutil.rmtree(tree.root)  # the loaders read the database only
    return db, len(jpegs), tree.nbytes, tree.linked


def warm_page_cache(db: Path) -> None:
    with open(db / "data.mdb", "rb") as f:
        while f.read(1 << 24):
            pass


def make_contenders(db: Path, memory: MemorySource, args: argparse.Namespace) -> list[Contender]:
    from dali_pipeline import DALILoader, PipelineOptions, make_dali_loader
    from lmdb_io.torch_loader import make_torch_loader

    cores, batch, crop = args.cores, args.batch, args.crop
    threads = args.dali_threads or cores + 1

    def dali(py_workers: int) -> Callable[[int], Iterable]:
        return lambda seed: make_dali_loader(
            db, batch, train=True, seed=seed, device_id=None, num_threads=threads, py_workers=py_workers, crop=crop
        )

    def dali_memory(seed: int) -> Iterable:
        source = memory_source_class()(memory.payloads, memory.labels, batch, seed=seed)
        opts = PipelineOptions(
            batch_size=batch, device_id=None, num_threads=threads, py_workers=0, crop=crop, seed=seed
        )
        return DALILoader(source, opts, train=True)

    def torch_loader(seed: int) -> Iterable:
        return make_torch_loader(db, batch, train=True, seed=seed, workers=cores, crop=crop)

    contenders = [
        Contender(
            "dali_lmdb_w0",
            "DALI CPU train from the LMDB, source in the pipeline thread (py_workers=0)",
            f"`make_dali_loader(device_id=None, num_threads={threads}, py_workers=0)`: image_random_crop "
            f"(libjpeg-turbo, "
            f"crop fused into decoding), resize {crop}, flip, normalize to CHW float32",
            dali(0),
        )
    ]
    for w in args.py_workers:
        contenders.append(
            Contender(
                f"dali_lmdb_w{w}",
                f"DALI CPU train from the LMDB, parallel source (py_workers={w})",
                f"same, `py_workers={w}`: the LMDB source in {w} spawned Python process{'es' if w > 1 else ''}",
                dali(w),
            )
        )
    contenders.append(
        Contender(
            "torch",
            f"torchvision DataLoader train from the LMDB, {cores} workers",
            f"`make_torch_loader(workers={cores})`: ImageFolderLMDB, PIL decode, RandomResizedCrop({crop}), "
            f"flip, ToTensor, Normalize",
            torch_loader,
        )
    )
    contenders.append(
        Contender(
            "dali_memory_w0",
            "DALI CPU train from the same JPEG bytes in memory (py_workers=0)",
            "same graph and options as py_workers=0; `DALILoader(MemorySource)`: a list of uint8 arrays read "
            "in epoch_plan order",
            dali_memory,
        )
    )
    return contenders


def spread(rounds: Rounds, key: str) -> str:
    rates = [t.rate for t in rounds.used_timings(key)]
    median = statistics.median(rates)
    return f"{median:,.0f}" if len(rates) == 1 else f"{median:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def build_rows(contenders: Sequence[Contender], rounds: Rounds, source_us: dict[str, float]) -> list[Row]:
    """The table: per-row ratios are medians of per-round ratios (contenders of one round ran together)."""
    by_key = {c.key: c for c in contenders}
    dali_keys = [k for k in by_key if k.startswith("dali_lmdb")]
    rows = []
    for key in dali_keys:
        ratio = rounds.median_ratio(key, "torch")
        extra = "" if key == "dali_lmdb_w0" else f"; {rounds.median_ratio(key, 'dali_lmdb_w0'):.2f}x vs py_workers=0"
        rows.append(
            Row(
                by_key[key].what,
                by_key[key].how,
                spread(rounds, key),
                f"{ratio:.2f}x vs torch{extra}",
                ">= 1.8x vs torch",
                yes_no(ratio >= 1.8),
            )
        )
    rows.append(Row(by_key["torch"].what, by_key["torch"].how, spread(rounds, "torch"), "1.00x", "baseline", ""))
    best = max(dali_keys, key=lambda key: rounds.median_ratio(key, "torch"))
    ratio = rounds.median_ratio(best, "torch")
    rows.append(
        Row(
            "DALI / torch: best DALI LMDB setting",
            f"`{best}` / `torch`, same cores, per-round ratio",
            f"{rounds.median_rate(best):,.0f} / {rounds.median_rate('torch'):,.0f}",
            f"{ratio:.2f}x",
            ">= 1.8x",
            yes_no(ratio >= 1.8),
        )
    )
    mem = by_key["dali_memory_w0"]
    rows.append(
        Row(
            mem.what,
            mem.how,
            spread(rounds, mem.key),
            f"{rounds.median_ratio(mem.key, 'torch'):.2f}x vs torch",
            "(reference)",
            "",
        )
    )
    cost = rounds.median_ratio(mem.key, "dali_lmdb_w0") - 1  # extra time per image with the LMDB source
    rows.append(
        Row(
            "LMDB source cost vs memory",
            "time per image: LMDB (py_workers=0) / memory - 1, per round",
            f"{rounds.median_rate('dali_lmdb_w0'):,.0f} vs {rounds.median_rate(mem.key):,.0f}",
            f"{cost * 100:+.1f} %",
            "<= 10 %",
            yes_no(cost <= 0.10),
        )
    )
    per_image_us = 1e6 / rounds.median_rate("dali_lmdb_w0")
    rows.append(
        Row(
            "source callback alone, LMDB vs memory",
            "`LMDBSource.__call__` (txn, get, header, xxh3) vs `MemorySource.__call__`, one thread, one epoch",
            f"{source_us['lmdb']:.1f} vs {source_us['memory']:.1f} us/sample",
            f"+{(source_us['lmdb'] - source_us['memory']) / per_image_us * 100:.1f} % of the pipeline's "
            f"{per_image_us:,.0f} us/image",
            "(info)",
            "",
        )
    )
    return rows


def interference(rounds: Rounds, cores: int) -> str:
    shares = [t.foreign_share(cores) for ts in rounds.timings.values() for t in ts]
    used = [rounds.timings[k][r].foreign_share(cores) for k in rounds.timings for r in rounds.used]
    note = (
        f"Other processes took {statistics.median(used):.0%} of the CPUs (median; max {max(used):.0%}) "
        f"during the counted epochs"
    )
    if rounds.disturbed:
        counted = (
            "COUNTED: too few undisturbed runs, numbers unreliable"
            if set(rounds.disturbed) & set(rounds.used)
            else "left out"
        )
        note += (
            f"; {len(rounds.disturbed)} disturbed round(s) (others > {rounds.max_foreign:.0%}, up to "
            f"{max(shares):.0%}) {counted}"
        )
    return note + "."


def header(info: dict[str, Any], args: argparse.Namespace, params: dict[str, Any], rounds: Rounds) -> str:
    links = "hard links" if params["hard_links"] else "COPIES (hard links failed)"
    return (
        f"### Loader benchmark: DALI CPU vs torchvision, loader only\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
        f"{info['memory_gib']} GiB RAM, Linux {info['kernel']}; Python {info['python']}, torch {info['torch']}, "
        f"torchvision {info['torchvision']}, DALI {info['dali']}, Pillow {info['pillow']}, "
        f"lmdb_io {info['lmdb_io']}.\n"
        f"Data: {args.images} JPEGs ({params['input_bytes'] / MB:,.1f} MB, {links} to {params['source_jpegs']} "
        f"files of {args.source.name}) in one LMDB ({params['db_bytes'] / MB:,.1f} MB), hot page cache.\n"
        f"Method: one train epoch per run (batch {args.batch}, crop {args.crop}, {params['batches']} batches), the "
        f"first {args.warmup_batches} batches untimed; contenders interleaved run by run, each on a fresh "
        f"loader; images/s is the median (min-max) of {len(rounds.used)} runs, ratios the median of per-run "
        f"ratios; no model. {interference(rounds, args.cores)}"
    )


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from bench.bench_lmdb import machine
    from dali_pipeline import LMDBSource

    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else (lambda s: None)
    db, source_jpegs, input_bytes, linked = prepare_database(args.source, args.images, workdir)
    warm_page_cache(db)
    memory = memory_source_class().from_database(db, args.batch)
    lmdb_source = LMDBSource(db, args.batch)
    check_same_samples(lmdb_source, memory, count=2 * args.batch)
    samples = len(lmdb_source.plan(0))
    source_us = {"lmdb": time_source(lmdb_source, samples) * 1e6, "memory": time_source(memory, samples) * 1e6}
    del lmdb_source

    def expected(seed: int) -> list[int]:
        return epoch_plan(len(memory.payloads), 0, 1, 0, seed, True, args.batch, True).indices.tolist()

    contenders = make_contenders(db, memory, args)
    rounds = run_rounds(
        contenders,
        args.runs,
        args.batch,
        args.warmup_batches,
        expected,
        cores=args.cores,
        max_foreign=args.max_foreign,
        extra_runs=args.extra_runs,
        quiet_wait=args.quiet_wait,
        log=log,
    )
    info = {**machine(), **versions()}
    params = {
        "images": args.images,
        "runs": args.runs,
        "batch": args.batch,
        "crop": args.crop,
        "cores": args.cores,
        "py_workers": args.py_workers,
        "warmup_batches": args.warmup_batches,
        "max_foreign": args.max_foreign,
        "extra_runs": args.extra_runs,
        "quiet_wait": args.quiet_wait,
        "batches": samples // args.batch,
        "source": str(args.source),
        "source_jpegs": source_jpegs,
        "input_bytes": input_bytes,
        "db_bytes": os.path.getsize(db / "data.mdb"),
        "hard_links": linked,
    }
    rows = build_rows(contenders, rounds, source_us)
    return {
        "machine": info,
        "params": params,
        "table": render(rows, header(info, args, params, rounds)),
        "median_images_per_s": {c.key: rounds.median_rate(c.key) for c in contenders},
        "source_us_per_sample": source_us,
        "rounds_used": rounds.used,
        "rounds_disturbed": rounds.disturbed,
        "runs": {
            key: [
                {
                    "batches": t.batches,
                    "timed_images": t.images,
                    "seconds": t.seconds,
                    "images_per_s": t.rate,
                    "cores_used": t.cores_used,
                    "others_cpu_share": t.foreign_share(args.cores),
                }
                for t in ts
            ]
            for key, ts in rounds.timings.items()
        },
        "contenders": {c.key: {"what": c.what, "how": c.how} for c in contenders},
        "rows": [asdict(r) for r in rows],
    }


def parse_workers(text: str) -> list[int]:
    values = sorted({int(s) for s in text.split(",") if s.strip()})
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2048, help="JPEGs in the database (default 2048)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per contender; the median is reported (default 3)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--crop", type=int, default=224, help="train crop size (default 224)")
    p.add_argument(
        "--cores",
        type=int,
        default=cores,
        help=f"DataLoader workers (default: usable cores, {cores}; more measured slower here)",
    )
    p.add_argument(
        "--dali-threads",
        type=int,
        default=None,
        help="DALI CPU threads (default: cores + 1, DALI's best here: its Python thread mostly waits)",
    )
    p.add_argument(
        "--py-workers",
        type=parse_workers,
        default=[1, 2],
        metavar="N,N",
        help="DALI parallel-source worker counts measured besides py_workers=0 (default 1,2)",
    )
    p.add_argument("--warmup-batches", type=int, default=2, help="untimed batches at the start of each run (default 2)")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        metavar="SHARE",
        help="a run is disturbed when other processes take more than this share of the CPUs during "
        "a timed epoch (default 0.10)",
    )
    p.add_argument(
        "--extra-runs",
        type=int,
        default=None,
        metavar="N",
        help="more runs allowed to replace disturbed ones (default: --runs)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to go below --max-foreign "
        "(default 60; 0: do not wait)",
    )
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"JPEG source tree (default {DEFAULT_SOURCE})")
    p.add_argument("--workdir", type=Path, help="where the tree and database go (default: a temp dir, deleted after)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write all numbers as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log each run's rate to stderr")
    args = p.parse_args(argv)
    if min(args.images, args.runs, args.batch, args.crop, args.cores, args.warmup_batches) < 1:
        p.error("--images, --runs, --batch, --crop, --cores and --warmup-batches must be positive")
    if args.extra_runs is None:
        args.extra_runs = args.runs
    if args.extra_runs < 0 or not 0 < args.max_foreign <= 1:
        p.error("--extra-runs must be >= 0 and --max-foreign in (0, 1]")
    if args.images // args.batch <= args.warmup_batches:
        p.error(
            f"--images {args.images} gives {args.images // args.batch} batches of {args.batch}: "
            f"need more than --warmup-batches ({args.warmup_batches})"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_and_report(run_benchmark, parse_args(argv), "bench_loaders_")


if __name__ == "__main__":
    sys.exit(main())
