"""Loaders alone: the DALI CPU train pipeline against the torchvision DataLoader, side by side, no model.

JPEGs replicated by hard links into one LMDB, hot page cache; one train epoch per contender per round on
fresh loaders, contenders interleaved, disturbed rounds replaced (``--max-foreign``, ``--extra-runs``). Also
the same DALI graph fed from memory (the LMDB source's cost) and the peers of ``bench.lib.comparison``.
Example: ``python -m bench.loaders --images 1000 --runs 3 --batch 64 --json bench/results/loaders.json``
"""

import argparse
import itertools
import os
import statistics
import sys
import time
from collections import namedtuple
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib import BenchError, comparison, data, entry, machine, ours
from bench.lib.comparison import cost_row, rate_row, ratio_row
from bench.lib.peers import FLOAT, PEERS, Samples
from bench.lib.table import Row, Table, yes_no
from bench.lib.timing import DATALOADER_PREFETCH, Contender, Rounds, run_rounds

SampleInfo = namedtuple("SampleInfo", "idx_in_epoch epoch_idx")  # what the sources read of DALI's SampleInfo


def check_same_samples(a: Any, b: Any, count: int) -> None:
    """Two sources must give the same bytes, labels, indices, padding and crops for the same sample infos."""
    for epoch, i in itertools.product((0, 1), range(count)):
        info = SampleInfo(i, epoch)
        for name, x, y in zip(a.output_names, a(info), b(info), strict=True):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                raise BenchError(f"sources differ at epoch {epoch}, sample {i}: {name}")


def time_source(source: Callable, samples: int, repeats: int = 3) -> float:
    """Median seconds per call over one epoch's first ``samples`` samples, one thread."""
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(samples):
            source(SampleInfo(i, 0))
        per_call.append((time.perf_counter() - started) / samples)
    return statistics.median(per_call)


def contenders(db: Path, memory: Any, args: argparse.Namespace, built: comparison.Built) -> tuple[list, list]:
    """This project's loaders on the originals; the peers and controls (``bench.lib.comparison``)."""
    from dali_pipeline import fused_resize
    from dali_pipeline.pipelines import PipelineOptions

    batch, crop, cores = args.batch, args.crop, args.cores
    cpu = dict(device_id=None, num_threads=args.dali_threads or cores + 1)
    dali_held, torch_held = PipelineOptions.prefetch, cores * DATALOADER_PREFETCH  # batches they hold ahead
    found: list[Contender] = []

    def add(key: str, what: str, how: str, kind: str = "dali", held: int = dali_held, **options: Any) -> None:
        make = ours.loader(kind, db, batch, crop, **(options if kind == "torch" else cpu | options))
        found.append(Contender(key, what, how, make, held=held))

    # building the fused operator (first use on this machine) is set-up, never a timed row's first batch
    if PipelineOptions(batch_size=batch).uses_fused_resize:
        steps = f"then one fused resize {crop} + flip + normalize to {FLOAT} (`dali_pipeline.fused_resize`)"
    else:
        steps = f"resize {crop}, flip, normalize to {FLOAT} (fused resize unavailable: "
        steps += f"{fused_resize.unavailable_reason()})"
    lmdb, threads = "DALI CPU train from the LMDB", cpu["num_threads"]
    how = f"`make_dali_loader(device_id=None, num_threads={threads}, py_workers=0)`: image_slice of the source's "
    how += f"crop window (`train_view`; libjpeg-turbo, crop fused into decoding), {steps}"
    add("dali_lmdb_w0", f"{lmdb}, source in the pipeline thread (py_workers=0)", how, py_workers=0)
    what = f"{lmdb}, crops drawn by the decoder (py_workers=0; the graph before crops came from the source)"
    how = "as py_workers=0, the source handing no crop windows: image_random_crop, a coin flip (`fn.random`)"
    add("dali_random_w0", what, how, "random", py_workers=0)
    for w in args.py_workers:
        how = f"same, `py_workers={w}`: the LMDB source in {w} spawned Python process{'es' if w > 1 else ''}"
        add(f"dali_lmdb_w{w}", f"{lmdb}, parallel source (py_workers={w})", how, py_workers=w)
    what = f"{lmdb}, DALI's own resize, flip and normalize (`fused_cpu_resize=False`)"
    how = f"as py_workers=0, with fn.resize({crop}, linear, antialias) and fn.crop_mirror_normalize: "
    how += "the pre-fused graph"
    add("dali_ops_lmdb_w0", what, how, py_workers=0, fused_cpu_resize=False)
    torch_how = f"`make_torch_loader(workers={cores})`: ImageFolderLMDB, PIL decode, resized_crop({crop}) of the "
    torch_how += f"`train_view` box, flip, uint8 from the workers (persistent), normalized to {FLOAT} in the loader"
    what = f"torchvision DataLoader train from the LMDB, {cores} workers"
    add("torch", what, torch_how, "torch", torch_held, workers=cores)
    what = "DALI CPU train from the same JPEG bytes in memory (py_workers=0)"
    how = "same graph and options as py_workers=0; `DALILoader(MemorySource)`: uint8 arrays read in RankPlan order"
    add("dali_memory_w0", what, how, "memory", memory=memory)
    w = args.control_py_workers
    mine = {"dali": (cpu | {"py_workers": w}, dali_held, f"`make_dali_loader(py_workers={w})`, as above, on that LMDB")}
    mine["torch"] = ({"workers": cores}, torch_held, f"{torch_how}, on that LMDB")
    return found, comparison.contenders(built, batch, crop, cores, mine)


def build_rows(found: Sequence[Contender], rounds: Rounds, source_us: dict[str, float]) -> list[Row]:
    """Per-row ratios are medians of per-round ratios (the contenders of a round ran together)."""
    by_key = {c.key: c for c in found}
    vs_torch = {key: rounds.median_ratio(key, "torch") for key in by_key}
    dali_keys = [k for k in by_key if k.startswith("dali_lmdb")]
    rows = []
    for key in dali_keys:
        extra = "" if key == "dali_lmdb_w0" else f"; {rounds.median_ratio(key, 'dali_lmdb_w0'):.2f}x vs py_workers=0"
        said = f"{vs_torch[key]:.2f}x vs torch{extra}"
        rows.append(rate_row(rounds, by_key[key], said, target=">= 1.8x vs torch", met=yes_no(vs_torch[key] >= 1.8)))
    gain = rounds.median_ratio("dali_lmdb_w0", "dali_ops_lmdb_w0")
    said = f"{vs_torch['dali_ops_lmdb_w0']:.2f}x vs torch; the fused graph is {gain:.2f}x it"
    rows.append(rate_row(rounds, by_key["dali_ops_lmdb_w0"], said, target="(reference)"))
    rows.append(rate_row(rounds, by_key["torch"], "1.00x", target="baseline"))
    best = max(dali_keys, key=vs_torch.__getitem__)
    rows.append(ratio_row(rounds, "DALI / torch: best DALI LMDB setting", best, "torch", 1.8))
    said = f"{vs_torch['dali_memory_w0']:.2f}x vs torch"
    rows.append(rate_row(rounds, by_key["dali_memory_w0"], said, target="(reference)"))
    said_random = f"{vs_torch['dali_random_w0']:.2f}x vs torch"
    rows.append(rate_row(rounds, by_key["dali_random_w0"], said_random, target="(reference)"))
    how = "time per image: crops from the source (py_workers=0) / drawn by the decoder - 1, per round"
    rows.append(
        cost_row(rounds, "crop and flip from the source: cost vs DALI's random crop", "dali_random_w0", how, 0.03)
    )
    how = "time per image: LMDB (py_workers=0) / memory - 1, per round"
    rows.append(cost_row(rounds, "LMDB source cost vs memory", "dali_memory_w0", how, 0.05))
    per_image_us = 1e6 / rounds.median_rate("dali_lmdb_w0")
    share = (source_us["lmdb"] - source_us["memory"]) / per_image_us * 100
    how = (
        "`LMDBSource.__call__` (txn, get, header, xxh3, crop window) vs `MemorySource.__call__`, one thread, one epoch"
    )
    result = f"{source_us['lmdb']:.1f} vs {source_us['memory']:.1f} us/sample"
    said = f"+{share:.1f} % of the pipeline's {per_image_us:,.0f} us/image"
    rows.append(Row("source callback alone, LMDB vs memory", how, result, ratio=said, target="(info)"))
    share = (source_us["lmdb"] - source_us["lmdb_no_crops"]) / per_image_us * 100
    how = "`LMDBSource.__call__` with crop windows (header size, `train_view`) vs without, one thread, one epoch"
    result = f"{source_us['lmdb']:.1f} vs {source_us['lmdb_no_crops']:.1f} us/sample"
    said = f"+{share:.1f} % of the pipeline's {per_image_us:,.0f} us/image"
    rows.append(Row("source callback alone, with vs without crop windows", how, result, ratio=said, target="(info)"))
    return rows


def run(args: argparse.Namespace, work: Path) -> Table:
    from dali_pipeline.source import LMDBSource
    from lmdb_io.reading.presets import TrainPreset

    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else (lambda s: None)
    prepared = data.prepare_database(args.source, args.images, work, keep_tree=True)
    length = prepared.tree.images
    built = comparison.build_all(Samples.from_tree(prepared.tree.root), prepared.tree.root, work, args.peers)
    data.remove(prepared.tree.root)
    memory = ours.memory_source(prepared.db, length, args.batch, args.crop)
    lmdb_source = LMDBSource(prepared.db, ours.plan(length, args.batch), crops=TrainPreset(args.crop))
    check_same_samples(lmdb_source, memory, count=2 * args.batch)
    samples = len(lmdb_source.plan.for_epoch(0))
    source_us = {"lmdb": time_source(lmdb_source, samples) * 1e6, "memory": time_source(memory, samples) * 1e6}
    source_us["lmdb_no_crops"] = time_source(LMDBSource(prepared.db, lmdb_source.plan), samples) * 1e6
    del lmdb_source
    own, compared = contenders(prepared.db, memory, args, built)
    options = {k: getattr(args, k) for k in ("cores", "max_foreign", "extra_runs", "quiet_wait", "warmup_rounds")}
    expected = ours.plan_indices(length, args.batch)
    rounds = run_rounds(own + compared, args.runs, args.batch, args.warmup_batches, expected, log=log, **options)
    want = {f"torch.{FLOAT.split()[0]}"}  # as torch names it
    for key, found in rounds.dtypes().items():
        if found != want:
            raise BenchError(f"{key} delivered {', '.join(sorted(found))} images, not {FLOAT}: the rows would differ")
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
    raw: dict[str, Any] = {"machine": info, "params": {k: str(v) for k, v in vars(args).items()}}
    raw |= {"source_us_per_sample": source_us, "db_bytes": prepared.db_bytes, "input_bytes": prepared.tree.nbytes}
    raw |= {**rounds.raw(), "built_bytes": built.nbytes, "not_run": built.skipped}
    rows = build_rows(own, rounds, source_us) + comparison.rows(compared, rounds, "dali_lmdb_w0", built)
    rows.append(comparison.first_batch_row(rounds, "dali_lmdb_w0"))
    title = "Loaders alone: DALI CPU vs torchvision, FFCV, LitData, WebDataset"
    return Table(title, header, rows, raw, {"result": "images/s"})


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


@entry
def main(argv: Sequence[str] | None = None) -> int:
    cores, n = len(os.sched_getaffinity(0)), data.positive
    p = argparse.ArgumentParser(prog="python -m bench.loaders", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--images", type=n, default=1000, help="JPEGs in the database (default 1000)")
    a("--runs", type=n, default=5, help="timed runs per contender; the median is reported (default 5)")
    a("--batch", type=n, default=64, help="batch size (default 64)")
    a("--crop", type=n, default=224, help="train crop size (default 224)")
    a("--cores", type=n, default=cores, help=f"DataLoader workers (default: usable cores, {cores})")
    a("--dali-threads", type=n, help="DALI CPU threads (default: cores + 1, DALI's best here)")
    a("--py-workers", type=parse_workers, default=[1, 2], metavar="N,N", help="DALI source workers besides 0 (1,2)")
    a("--warmup-batches", type=n, default=2, help="untimed batches at the start of each run (default 2)")
    a("--max-foreign", type=float, default=0.1, help="a run is disturbed when others take more of the CPUs (0.10)")
    a("--extra-runs", type=int, metavar="N", help="runs allowed to replace disturbed ones (default: --runs)")
    a("--quiet-wait", type=float, default=60.0, help="wait up to this long for quiet before each run (60; 0: no)")
    a("--warmup-rounds", type=int, default=1, help="untimed runs of every contender first (FFCV's JIT; default 1)")
    a("--peers", type=parse_peers, default=list(PEERS), metavar="P,P", help=f"peer loaders ({','.join(PEERS)}; none)")
    a("--control-py-workers", type=int, default=0, help="DALI py_workers on the control LMDBs (default 0)")
    a("-v", "--verbose", action="store_true", help="log each run's rate to stderr")
    data.add_common_flags(p)
    args = p.parse_args(argv)
    args.extra_runs = args.runs if args.extra_runs is None else args.extra_runs
    if min(args.warmup_rounds, args.control_py_workers, args.extra_runs) < 0 or not 0 < args.max_foreign <= 1:
        p.error("--warmup-rounds, --control-py-workers and --extra-runs must be >= 0, --max-foreign in (0, 1]")
    if args.images // args.batch <= args.warmup_batches:
        p.error(f"--images {args.images} gives {args.images // args.batch} batches: need more than --warmup-batches")
    with data.workdir(args.workdir, "bench_loaders_") as work:
        return run(args, work).report(args.json)


if __name__ == "__main__":
    sys.exit(main())
