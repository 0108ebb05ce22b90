"""Loaders alone: the DALI CPU train pipeline against the torchvision DataLoader, side by side, no model.

Real JPEGs (hymenoptera, replicated by hard links) in one LMDB, hot page cache. One train epoch per
contender per round, the first ``--warmup-batches`` untimed, contenders interleaved round by round on
fresh loaders; a round in which other processes took more than ``--max-foreign`` of the CPUs is
disturbed and replaced (up to ``--extra-runs``); ``--warmup-rounds`` untimed rounds come first (FFCV's
JIT, first pipeline builds). Contenders: the DALI pipeline with the LMDB source in its thread and in
Python workers, the torchvision DataLoader with a worker per core, the same DALI graph fed the same bytes
from memory (``MemorySource``: the LMDB source's cost), and the peers (``bench.lib.comparison``): FFCV
(full resolution and ``max_resolution=256``), LitData, WebDataset, with this project's loaders on FFCV's
stored bytes and on ``convert.py --quality 90`` / ``--max-size 256`` as controls. Example::

    python -m bench.loaders --images 1000 --runs 3 --batch 64 --json bench/results/loaders.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib import comparison, data, machine
from bench.lib.peers import FLOAT, PEERS
from bench.lib.peers.common import Samples
from bench.lib.table import Row, Table, yes_no
from bench.lib.timing import DATALOADER_PREFETCH, Contender, Rounds, plan_indices, run_rounds


class SampleInfo:
    """The two fields of ``nvidia.dali.types.SampleInfo`` that the sources read."""

    def __init__(self, idx_in_epoch: int, epoch_idx: int) -> None:
        self.idx_in_epoch, self.epoch_idx = idx_in_epoch, epoch_idx


def check_same_samples(a: Callable, b: Callable, count: int) -> None:
    """Two sources must give the same bytes, labels, indices and padding for the same sample infos."""
    for epoch in (0, 1):
        for i in range(count):
            for name, x, y in zip(
                ("bytes", "label", "index", "padding"), a(SampleInfo(i, epoch)), b(SampleInfo(i, epoch)), strict=True
            ):
                if not np.array_equal(np.asarray(x), np.asarray(y)):
                    raise SystemExit(f"sources differ at epoch {epoch}, sample {i}: {name}")


def time_source(source: Callable, samples: int, repeats: int = 3) -> float:
    """Median seconds per call over one epoch's first ``samples`` samples, one thread."""
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(samples):
            source(SampleInfo(i, 0))
        per_call.append((time.perf_counter() - started) / samples)
    return statistics.median(per_call)


def contenders(
    db: Path, memory: Any, args: argparse.Namespace, built: comparison.Built
) -> tuple[list[Contender], list[Contender]]:
    """This project's loaders on the originals; the peers and controls (``bench.lib.comparison``)."""
    from dali_pipeline import fused_resize
    from dali_pipeline.pipelines import PipelineOptions
    from dali_pipeline.source import MemorySource
    from lmdb_dali_train.loaders.dali_loader import DALILoader, make_dali_loader
    from lmdb_dali_train.loaders.torch_loader import make_torch_loader
    from lmdb_io.reading.plan import RankPlan
    from lmdb_io.reading.presets import TrainPreset
    from lmdb_io.reading.spec import ReadSpec

    batch, crop, threads = args.batch, args.crop, args.dali_threads or args.cores + 1

    def dali(w: int, path: Path = db, fused: bool = True) -> Callable[[int], Iterable]:
        return lambda seed: make_dali_loader(
            ReadSpec(path=path, batch_size=batch, train=True, seed=seed, crop=crop),
            dali_threads=threads,
            py_workers=w,
            fused_cpu_resize=fused,
        )

    def torch_on(path: Path) -> Callable[[int], Iterable]:
        return lambda seed: make_torch_loader(
            ReadSpec(path=path, batch_size=batch, train=True, seed=seed, crop=crop), workers=args.cores
        )

    def dali_memory(seed: int) -> Iterable:
        source = MemorySource(memory.payloads, memory.labels, RankPlan(len(memory.payloads), batch, seed=seed))
        opts = PipelineOptions(batch_size=batch, device_id=None, num_threads=threads, py_workers=0, seed=seed)
        return DALILoader(source, opts, TrainPreset(crop))

    # building the fused operator (first use on this machine) is set-up, never a timed row's first batch
    if PipelineOptions(batch_size=batch).uses_fused_resize:
        steps = f"then one fused resize {crop} + flip + normalize to {FLOAT} (`dali_pipeline.fused_resize`)"
    else:
        steps = (
            f"resize {crop}, flip, normalize to {FLOAT} (fused resize unavailable: {fused_resize.unavailable_reason()})"
        )
    how = (
        f"`make_dali_loader(device_id=None, num_threads={threads}, py_workers=0)`: image_random_crop "
        f"(libjpeg-turbo, crop fused into decoding), {steps}"
    )
    dali_held = PipelineOptions.prefetch  # batches DALI's queue holds ahead
    torch_held = args.cores * DATALOADER_PREFETCH
    found = [
        Contender(
            "dali_lmdb_w0",
            "DALI CPU train from the LMDB, source in the pipeline thread (py_workers=0)",
            how,
            dali(0),
            held=dali_held,
        )
    ]
    for w in args.py_workers:
        what = f"DALI CPU train from the LMDB, parallel source (py_workers={w})"
        how = f"same, `py_workers={w}`: the LMDB source in {w} spawned Python process{'es' if w > 1 else ''}"
        found.append(Contender(f"dali_lmdb_w{w}", what, how, dali(w), held=dali_held))
    what = "DALI CPU train from the LMDB, DALI's own resize, flip and normalize (`fused_cpu_resize=False`)"
    how = (
        f"as py_workers=0, with fn.resize({crop}, linear, antialias) and fn.crop_mirror_normalize: the pre-fused graph"
    )
    found.append(Contender("dali_ops_lmdb_w0", what, how, dali(0, fused=False), held=dali_held))
    torch_how = f"`make_torch_loader(workers={args.cores})`: ImageFolderLMDB, PIL decode, RandomResizedCrop({crop}), "
    torch_how += f"flip, uint8 from the workers (persistent), normalized to {FLOAT} in the loader"
    found.append(
        Contender(
            "torch",
            f"torchvision DataLoader train from the LMDB, {args.cores} workers",
            torch_how,
            torch_on(db),
            held=torch_held,
        )
    )
    how = "same graph and options as py_workers=0; `DALILoader(MemorySource)`: uint8 arrays read in RankPlan order"
    found.append(
        Contender(
            "dali_memory_w0",
            "DALI CPU train from the same JPEG bytes in memory (py_workers=0)",
            how,
            dali_memory,
            held=dali_held,
        )
    )
    control_how = f"`make_dali_loader(py_workers={args.control_py_workers})`, as above, on that LMDB"
    return found, comparison.contenders(
        built,
        batch,
        crop,
        args.cores,
        lambda path: dali(args.control_py_workers, path),
        torch_on,
        {"dali": dali_held, "torch": torch_held},
        control_how,
        f"{torch_how}, on that LMDB",
    )


def build_rows(found: Sequence[Contender], rounds: Rounds, source_us: dict[str, float]) -> list[Row]:
    """Per-row ratios are medians of per-round ratios (the contenders of a round ran together)."""
    by_key = {c.key: c for c in found}
    dali_keys = [k for k in by_key if k.startswith("dali_lmdb")]
    rows = []

    def row(key: str, ratio: str, target: str = "", met: str = "") -> Row:
        return Row(
            by_key[key].what,
            by_key[key].how,
            rounds.spread(key),
            rounds.median_rate(key),
            ratio=ratio,
            first_batch=comparison.first_batch(rounds, key),
            target=target,
            met=met,
        )

    for key in dali_keys:
        ratio = rounds.median_ratio(key, "torch")
        extra = "" if key == "dali_lmdb_w0" else f"; {rounds.median_ratio(key, 'dali_lmdb_w0'):.2f}x vs py_workers=0"
        rows.append(row(key, f"{ratio:.2f}x vs torch{extra}", ">= 1.8x vs torch", yes_no(ratio >= 1.8)))
    gain = rounds.median_ratio("dali_lmdb_w0", "dali_ops_lmdb_w0")
    said = f"{rounds.median_ratio('dali_ops_lmdb_w0', 'torch'):.2f}x vs torch; the fused graph is {gain:.2f}x it"
    rows.append(row("dali_ops_lmdb_w0", said, "(reference)"))
    rows.append(row("torch", "1.00x", "baseline"))
    best = max(dali_keys, key=lambda key: rounds.median_ratio(key, "torch"))
    ratio = rounds.median_ratio(best, "torch")
    result = f"{rounds.median_rate(best):,.0f} / {rounds.median_rate('torch'):,.0f}"
    what, how = "DALI / torch: best DALI LMDB setting", f"`{best}` / `torch`, same cores, per-round ratio"
    rows.append(Row(what, how, result, ratio=f"{ratio:.2f}x", target=">= 1.8x", met=yes_no(ratio >= 1.8)))
    rows.append(row("dali_memory_w0", f"{rounds.median_ratio('dali_memory_w0', 'torch'):.2f}x vs torch", "(reference)"))
    cost = rounds.median_ratio("dali_memory_w0", "dali_lmdb_w0") - 1  # extra time per image from the LMDB
    result = f"{rounds.median_rate('dali_lmdb_w0'):,.0f} vs {rounds.median_rate('dali_memory_w0'):,.0f}"
    how = "time per image: LMDB (py_workers=0) / memory - 1, per round"
    rows.append(
        Row(
            "LMDB source cost vs memory",
            how,
            result,
            ratio=f"{cost * 100:+.1f} %",
            target="<= 5 %",
            met=yes_no(cost <= 0.05),
        )
    )
    per_image_us = 1e6 / rounds.median_rate("dali_lmdb_w0")
    share = (source_us["lmdb"] - source_us["memory"]) / per_image_us * 100
    rows.append(
        Row(
            "source callback alone, LMDB vs memory",
            "`LMDBSource.__call__` (txn, get, header, xxh3) vs `MemorySource.__call__`, one thread, one epoch",
            f"{source_us['lmdb']:.1f} vs {source_us['memory']:.1f} us/sample",
            ratio=f"+{share:.1f} % of the pipeline's {per_image_us:,.0f} us/image",
            target="(info)",
        )
    )
    return rows


def run(args: argparse.Namespace, work: Path) -> Table:
    from dali_pipeline.source import LMDBSource, MemorySource
    from lmdb_io.reading.plan import RankPlan

    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else (lambda s: None)
    prepared = data.prepare_database(args.source, args.images, work, keep_tree=True)
    length = prepared.tree.images
    built = comparison.build_all(Samples.from_tree(prepared.tree.root), prepared.tree.root, work, args.peers)
    data.remove(prepared.tree.root)
    memory = MemorySource.from_database(prepared.db, RankPlan(length, args.batch))
    lmdb_source = LMDBSource(prepared.db, RankPlan(length, args.batch))
    check_same_samples(lmdb_source, memory, count=2 * args.batch)
    samples = len(lmdb_source.plan.for_epoch(0))
    source_us = {"lmdb": time_source(lmdb_source, samples) * 1e6, "memory": time_source(memory, samples) * 1e6}
    del lmdb_source
    own, compared = contenders(prepared.db, memory, args, built)
    rounds = run_rounds(
        own + compared,
        args.runs,
        args.batch,
        args.warmup_batches,
        plan_indices(length, args.batch),
        cores=args.cores,
        max_foreign=args.max_foreign,
        extra_runs=args.extra_runs,
        quiet_wait=args.quiet_wait,
        log=log,
        warmup_rounds=args.warmup_rounds,
    )
    want = {str(torch_dtype(FLOAT))}
    for key, found in rounds.dtypes().items():
        if found != want:
            raise SystemExit(f"{key} delivered {', '.join(sorted(found))} images, not {FLOAT}: the rows would differ")
    info = machine.describe(gpu=False)
    header = (
        f"{machine.line(info)}\nData: {prepared.describe()}, from {args.source.name}.\n"
        f"Method: one train epoch per run (batch {args.batch}, crop {args.crop}, {samples // args.batch} batches), "
        f"untimed at each epoch's start: {args.warmup_batches} batches, or every batch a loader may hold ready before "
        f"the first is taken plus one (DataLoaders: workers x {DATALOADER_PREFETCH}; DALI: its queue; FFCV: "
        f"batches_ahead); contenders interleaved run by run, each on a fresh loader "
        f"(FFCV: one Loader, an epoch per run), after {args.warmup_rounds} untimed warm-up run(s); "
        f"images/s is the median (min-max) of {len(rounds.used)} runs, ratios the median of per-run ratios; "
        f"every loader delivers {FLOAT} images; no model. {rounds.interference()}"
    )
    raw: dict[str, Any] = {
        "machine": info,
        "params": {k: str(v) for k, v in vars(args).items()},
        "source_us_per_sample": source_us,
    }
    raw |= {"db_bytes": prepared.db_bytes, "input_bytes": prepared.tree.nbytes, **rounds.raw()}
    raw |= {"built_bytes": built.nbytes, "not_run": built.skipped}
    ours = "dali_lmdb_w0"
    rows = build_rows(own, rounds, source_us) + comparison.rows(compared, rounds, ours, built)
    rows.append(comparison.first_batch_row(rounds, ours))
    return Table(
        "Loaders alone: DALI CPU vs torchvision, FFCV, LitData, WebDataset",
        header,
        rows,
        raw,
        {"result": "images/s"},
    )


def torch_dtype(what: str) -> Any:
    """``FLOAT``'s dtype as torch names it (``float32 CHW`` -> ``torch.float32``)."""
    import torch

    return getattr(torch, what.split()[0])


def parse_workers(text: str) -> list[int]:
    values = sorted({int(s) for s in text.split(",") if s.strip()})
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return values


def parse_peers(text: str) -> list[str]:
    names = [] if text.strip() == "none" else [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(prog="python -m bench.loaders", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="JPEGs in the database (default 1000)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per contender; the median is reported (default 5)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--crop", type=int, default=224, help="train crop size (default 224)")
    p.add_argument("--cores", type=int, default=cores, help=f"DataLoader workers (default: usable cores, {cores})")
    p.add_argument("--dali-threads", type=int, help="DALI CPU threads (default: cores + 1, DALI's best here)")
    a = p.add_argument
    a("--py-workers", type=parse_workers, default=[1, 2], metavar="N,N", help="DALI source workers besides 0 (1,2)")
    a("--warmup-batches", type=int, default=2, help="untimed batches at the start of each run (default 2)")
    a("--max-foreign", type=float, default=0.1, help="a run is disturbed when others take more of the CPUs (0.10)")
    a("--extra-runs", type=int, metavar="N", help="runs allowed to replace disturbed ones (default: --runs)")
    a("--quiet-wait", type=float, default=60.0, help="wait up to this long for quiet before each run (60; 0: no)")
    a("--warmup-rounds", type=int, default=1, help="untimed runs of every contender first (FFCV's JIT; default 1)")
    a("--peers", type=parse_peers, default=list(PEERS), metavar="P,P", help=f"peer loaders ({','.join(PEERS)}; none)")
    a("--control-py-workers", type=int, default=0, help="DALI py_workers on the control LMDBs (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each run's rate to stderr")
    data.add_common_flags(p)
    args = p.parse_args(argv)
    if min(args.images, args.runs, args.batch, args.crop, args.cores, args.warmup_batches) < 1:
        p.error("--images, --runs, --batch, --crop, --cores and --warmup-batches must be positive")
    if min(args.warmup_rounds, args.control_py_workers) < 0:
        p.error("--warmup-rounds and --control-py-workers must be >= 0")
    args.extra_runs = args.runs if args.extra_runs is None else args.extra_runs
    if args.extra_runs < 0 or not 0 < args.max_foreign <= 1:
        p.error("--extra-runs must be >= 0 and --max-foreign in (0, 1]")
    if args.images // args.batch <= args.warmup_batches:
        p.error(f"--images {args.images} gives {args.images // args.batch} batches: need more than --warmup-batches")
    with data.workdir(args.workdir, "bench_loaders_") as work:
        return run(args, work).report(args.json)


if __name__ == "__main__":
    sys.exit(main())
