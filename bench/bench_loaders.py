#!/usr/bin/env python3
"""Benchmark the DALI CPU train pipeline against the torchvision DataLoader, loader only, side by side.

On real JPEGs (hymenoptera replicated by hard links) converted to one LMDB, with a hot page cache, it
times one train epoch per contender per run (no model; the first ``--warmup-batches`` batches of each
run untimed), interleaving the contenders run by run, each on a freshly built loader, and prints one
Markdown table of medians (``--json FILE`` also saves the raw numbers). Contenders: the DALI CPU
pipeline with the LMDB source in the pipeline's thread and in Python workers, the torchvision
DataLoader with as many workers as cores, and the same DALI graph fed the same JPEG bytes from memory
(the LMDB source's cost). Example::

    python bench/bench_loaders.py --images 2048 --runs 3 --batch 64 --json bench/results/loaders.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `lmdb_io` and `dali_pipeline` importable
    sys.path.insert(0, str(REPO))

from lmdb_io.shard import Shard, epoch_plan  # noqa: E402  (numpy only)

# torch, DALI and bench.bench_lmdb are imported inside functions: DALI's parallel source starts its
# workers with spawn, which re-imports this module in each of them; they need only MemorySource.

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "hymenoptera"
MB = 1e6


# -- the in-memory source ---------------------------------------------------------------------------

class MemorySource:
    """``dali_pipeline.LMDBSource``'s interface and sample order over encoded images held in memory.

    Follows ``lmdb_io.shard.epoch_plan`` exactly as LMDBSource does (``first_epoch + epoch_idx``, the
    plan of this rank), so a pipeline fed by it decodes the same bytes in the same order; what it
    leaves out is the LMDB transaction, the copy out of the map, the record header and the checksum.
    """

    def __init__(self, payloads: Sequence[np.ndarray], labels: Sequence[int], batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 first_epoch: int = 0) -> None:
        if len(payloads) != len(labels):
            raise ValueError(f"{len(payloads)} payloads but {len(labels)} labels")
        self.payloads = list(payloads)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.first_epoch = first_epoch
        self._plans: dict[int, Shard] = {}
        if self.num_batches(first_epoch) <= 0:
            raise ValueError(f"{len(self.payloads)} images give no whole batch of {batch_size}")

    @classmethod
    def from_database(cls, path: str | os.PathLike, batch_size: int, **kwargs: Any) -> "MemorySource":
        """Every record's encoded bytes read once (checksums verified) from an lmdb_io database."""
        from lmdb_io.database import ImageDatabase

        db = ImageDatabase(path, verify=True)
        payloads = [np.frombuffer(db.read(i)[0], dtype=np.uint8).copy() for i in range(len(db))]
        return cls(payloads, db.targets.tolist(), batch_size, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.payloads)

    def plan(self, epoch: int) -> Shard:
        plan = self._plans.get(epoch)
        if plan is None:
            plan = epoch_plan(len(self.payloads), self.rank, self.world_size, epoch, self.seed, self.shuffle,
                              self.batch_size, self.drop_last)
            self._plans = {epoch: plan}
        return plan

    def num_batches(self, epoch: Optional[int] = None) -> int:
        return len(self.plan(self.first_epoch if epoch is None else epoch)) // self.batch_size

    def __call__(self, sample_info: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        plan = self.plan(self.first_epoch + sample_info.epoch_idx)
        i = sample_info.idx_in_epoch
        if i >= len(plan):
            raise StopIteration
        index = int(plan.indices[i])
        return (self.payloads[index], np.array(self.labels[index], dtype=np.int64),
                np.array(index, dtype=np.int64), np.array(not plan.is_padding[i], dtype=np.uint8))


def memory_source_class() -> type:
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
            for name, x, y in zip(("bytes", "label", "index", "real"), a(info), b(info)):
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

@dataclass
class EpochTiming:
    """One timed epoch: batches seen, images and seconds counted after the warm-up batches."""

    batches: int
    images: int
    seconds: float
    indices: list[int]

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def time_epoch(loader: Iterable, batch_size: int, warmup: int, sync: Optional[Callable[[], None]] = None
               ) -> EpochTiming:
    """Iterate one epoch; the clock starts on receiving batch ``warmup`` (1-based) and stops on
    receiving the last one, after ``sync()`` (e.g. ``torch.cuda.synchronize``) where given."""
    if warmup < 1:
        raise ValueError("warmup must be at least 1 batch (the clock starts on receiving one)")
    started = last = None
    batches = images = 0
    indices: list[int] = []
    for batch in loader:
        batches += 1
        if len(batch.labels) != batch_size:
            raise SystemExit(f"batch {batches} holds {len(batch.labels)} samples, not {batch_size}")
        indices += batch.indices.tolist()
        if batches > warmup:
            images += batch_size
        if batches >= warmup:
            if sync is not None:
                sync()
            last = time.perf_counter()
            if batches == warmup:
                started = last
    if started is None or images == 0:
        raise SystemExit(f"an epoch of {batches} batches leaves none to time after {warmup} warm-up batches; "
                         f"use more images or a smaller batch")
    return EpochTiming(batches, images, last - started, indices)


@dataclass
class Contender:
    """One loader configuration: ``make(seed)`` builds a fresh loader."""

    key: str
    what: str
    how: str
    make: Callable[[int], Iterable]


def run_rounds(contenders: Sequence[Contender], runs: int, batch_size: int, warmup: int,
               expected: Callable[[int], list[int]], sync: Optional[Callable[[], None]] = None,
               log: Callable[[str], None] = lambda s: None) -> dict[str, list[EpochTiming]]:
    """``runs`` rounds; each builds every contender afresh (seed = round), times one epoch and deletes it
    (stopping its threads, workers and next-epoch prefetch) before the next contender starts. Every
    epoch must deliver ``expected(seed)``, the plan's indices, so all contenders do the same work."""
    timings: dict[str, list[EpochTiming]] = {c.key: [] for c in contenders}
    for run in range(runs):
        for c in contenders:
            loader = c.make(run)
            timing = time_epoch(loader, batch_size, warmup, sync)
            del loader
            gc.collect()
            if timing.indices != expected(run):
                raise SystemExit(f"{c.key}: run {run} delivered other samples than the epoch plan")
            timings[c.key].append(timing)
            log(f"run {run + 1}/{runs} {c.key}: {timing.rate:,.1f} img/s")
    return timings


def median_rate(timings: Sequence[EpochTiming]) -> float:
    return statistics.median(t.rate for t in timings)


# -- report -----------------------------------------------------------------------------------------

@dataclass
class Row:
    what: str
    how: str
    images_per_s: str
    ratio: str = ""
    target: str = ""
    met: str = ""


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(rows: Sequence[Row], title: str) -> str:
    cols = ["what", "how", "images/s", "ratio", "target", "met"]
    lines = [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(asdict(r).values()) + " |" for r in rows]
    return "\n".join(lines)


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
    graph = (f"decoders.image_random_crop (libjpeg-turbo, crop window fused into decoding) -> resize {crop}"
             f" -> flip -> normalize, CHW float32")

    def dali(py_workers: int) -> Callable[[int], Iterable]:
        return lambda seed: make_dali_loader(db, batch, train=True, seed=seed, device_id=None, num_threads=cores,
                                             py_workers=py_workers, crop=crop)

    def dali_memory(seed: int) -> Iterable:
        source = memory_source_class()(memory.payloads, memory.labels, batch, seed=seed)
        opts = PipelineOptions(batch_size=batch, device_id=None, num_threads=cores, py_workers=0, crop=crop,
                               seed=seed)
        return DALILoader(source, opts, train=True)

    contenders = [Contender("dali_lmdb_w0", "DALI CPU train, LMDB source in the pipeline thread",
                            f"`make_dali_loader(device_id=None, num_threads={cores}, py_workers=0)`: {graph}",
                            dali(0))]
    for w in args.py_workers:
        contenders.append(Contender(f"dali_lmdb_w{w}", f"DALI CPU train, LMDB source in {w} Python worker(s)",
                                    f"same, `py_workers={w}` (parallel external_source, spawn)", dali(w)))
    contenders.append(Contender(
        "torch", f"torchvision DataLoader train, {cores} workers",
        f"`make_torch_loader(workers={cores})`: ImageFolderLMDB, PIL decode, RandomResizedCrop({crop}), flip, "
        f"ToTensor, Normalize", lambda seed: make_torch_loader(db, batch, train=True, seed=seed, workers=cores,
                                                               crop=crop)))
    contenders.append(Contender("dali_memory_w0", "DALI CPU train, same JPEG bytes from memory",
                                "same graph and options as py_workers=0; `DALILoader(MemorySource)` over a list "
                                "of uint8 arrays in epoch_plan order", dali_memory))
    return contenders


def build_rows(rates: dict[str, float], source_us: dict[str, float], args: argparse.Namespace) -> list[Row]:
    torch_rate = rates["torch"]
    w0 = rates["dali_lmdb_w0"]
    rows = []
    for key in ["dali_lmdb_w0"] + [f"dali_lmdb_w{w}" for w in args.py_workers]:
        ratio = rates[key] / torch_rate
        extra = "" if key == "dali_lmdb_w0" else f"; {rates[key] / w0:.2f}x vs py_workers=0"
        what = ("DALI CPU train, LMDB source in the pipeline thread (py_workers=0)" if key == "dali_lmdb_w0"
                else f"DALI CPU train, LMDB source in {key.rsplit('w', 1)[1]} Python worker(s)")
        how = (f"`make_dali_loader(device_id=None, num_threads={args.cores}, py_workers=0)`: image_random_crop "
               f"(libjpeg-turbo, crop fused into decode), resize {args.crop}, flip, normalize"
               if key == "dali_lmdb_w0" else f"same, `py_workers={key.rsplit('w', 1)[1]}` (parallel source, spawn)")
        rows.append(Row(what, how, f"{rates[key]:,.0f}", f"{ratio:.2f}x vs torch{extra}", ">= 1.8x vs torch",
                        yes_no(ratio >= 1.8)))
    rows.append(Row(f"torchvision DataLoader train, {args.cores} workers",
                    f"`make_torch_loader(workers={args.cores})`: ImageFolderLMDB, PIL decode, RandomResizedCrop, "
                    f"flip, ToTensor, Normalize", f"{torch_rate:,.0f}", "1.00x", "baseline", ""))
    best = max((k for k in rates if k.startswith("dali_lmdb")), key=rates.__getitem__)
    ratio = rates[best] / torch_rate
    rows.append(Row("DALI / torch, best DALI LMDB setting", f"`{best}` / `torch`, same {args.cores} cores",
                    f"{rates[best]:,.0f} / {torch_rate:,.0f}", f"{ratio:.2f}x", ">= 1.8x", yes_no(ratio >= 1.8)))
    mem = rates["dali_memory_w0"]
    rows.append(Row("DALI CPU train, same JPEG bytes from memory (py_workers=0)",
                    "same graph and options; `DALILoader(MemorySource)`: list of uint8 arrays in epoch_plan order",
                    f"{mem:,.0f}", f"{mem / torch_rate:.2f}x vs torch", "(reference)", ""))
    cost = mem / w0 - 1  # extra time per image with the LMDB source, relative to memory
    rows.append(Row("LMDB source cost vs memory", "time per image, LMDB (py_workers=0) / memory - 1",
                    f"{w0:,.0f} vs {mem:,.0f}", f"{cost * 100:+.1f} %", "<= 10 %", yes_no(cost <= 0.10)))
    per_image_us = 1e6 / w0
    rows.append(Row("source callback alone, LMDB vs memory",
                    "`LMDBSource.__call__` (txn, get, header, xxh3) vs `MemorySource.__call__`, one thread, "
                    "one epoch", f"{source_us['lmdb']:.1f} vs {source_us['memory']:.1f} us/sample",
                    f"{(source_us['lmdb'] - source_us['memory']) / per_image_us * 100:.1f} % of a pipeline "
                    f"image's {per_image_us:,.0f} us", "(info)", ""))
    return rows


def header(info: dict[str, Any], args: argparse.Namespace, params: dict[str, Any]) -> str:
    links = "hard links" if params["hard_links"] else "COPIES (hard links failed)"
    return (f"### Loader benchmark (DALI CPU vs torchvision, loader only)\n\n"
            f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
            f"{info['memory_gib']} GiB RAM, Linux {info['kernel']}; Python {info['python']}, torch {info['torch']}, "
            f"torchvision {info['torchvision']}, DALI {info['dali']}, Pillow {info['pillow']}, "
            f"lmdb_io {info['lmdb_io']}.\n"
            f"Data: {args.images} JPEGs ({params['input_bytes'] / MB:,.1f} MB, {links} to {params['source_jpegs']} "
            f"files of {args.source.name}) in one LMDB ({params['db_bytes'] / MB:,.1f} MB), hot page cache. "
            f"Train epoch, batch {args.batch}, crop {args.crop}, {params['batches']} batches; first "
            f"{args.warmup_batches} batches of each run untimed; contenders interleaved run by run, each on a "
            f"fresh loader; median of {args.runs} runs; no model.")


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
    timings = run_rounds(contenders, args.runs, args.batch, args.warmup_batches, expected, log=log)
    rates = {key: median_rate(t) for key, t in timings.items()}
    info = {**machine(), **versions()}
    params = {"images": args.images, "runs": args.runs, "batch": args.batch, "crop": args.crop,
              "cores": args.cores, "py_workers": args.py_workers, "warmup_batches": args.warmup_batches,
              "batches": samples // args.batch, "source": str(args.source), "source_jpegs": source_jpegs,
              "input_bytes": input_bytes, "db_bytes": os.path.getsize(db / "data.mdb"), "hard_links": linked}
    rows = build_rows(rates, source_us, args)
    return {"machine": info, "params": params, "table": render(rows, header(info, args, params)),
            "median_images_per_s": rates, "source_us_per_sample": source_us,
            "runs": {key: [{"batches": t.batches, "timed_images": t.images, "seconds": t.seconds,
                            "images_per_s": t.rate} for t in ts] for key, ts in timings.items()},
            "contenders": {c.key: {"what": c.what, "how": c.how} for c in contenders},
            "rows": [asdict(r) for r in rows]}


def parse_workers(text: str) -> list[int]:
    values = sorted({int(s) for s in text.split(",") if s.strip()})
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return values


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2048, help="JPEGs in the database (default 2048)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per contender; the median is reported (default 3)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--crop", type=int, default=224, help="train crop size (default 224)")
    p.add_argument("--cores", type=int, default=cores,
                   help=f"DALI threads and DataLoader workers (default: usable cores, {cores})")
    p.add_argument("--py-workers", type=parse_workers, default=[1, 2], metavar="N,N",
                   help="DALI parallel-source worker counts measured besides py_workers=0 (default 1,2)")
    p.add_argument("--warmup-batches", type=int, default=2, help="untimed batches at the start of each run (default 2)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"JPEG source tree (default {DEFAULT_SOURCE})")
    p.add_argument("--workdir", type=Path, help="where the tree and database go (default: a temp dir, deleted after)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write all numbers as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log each run's rate to stderr")
    args = p.parse_args(argv)
    if min(args.images, args.runs, args.batch, args.crop, args.cores, args.warmup_batches) < 1:
        p.error("--images, --runs, --batch, --crop, --cores and --warmup-batches must be positive")
    if args.images // args.batch <= args.warmup_batches:
        p.error(f"--images {args.images} gives {args.images // args.batch} batches of {args.batch}: "
                f"need more than --warmup-batches ({args.warmup_batches})")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_loaders_")) if temp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_benchmark(args, workdir)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)
    print(result["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
