"""The loader-only rows: the DALI train pipeline (as train.py sets it) at every ``--hw-loads`` x
``--py-workers``, the same graph fed from memory per load, the LMDB source's cost, the graph before crop
windows came from the source (the decoder's random crop) against it, and the torchvision loader;
each in a ``child`` process, one epoch per run on a fresh loader, the warm-up batches untimed."""

import argparse
import os
from functools import partial
from pathlib import Path
from typing import Any

from .. import ours
from ..timing import DATALOADER_PREFETCH, Contender, run_rounds, untimed_batches
from . import Check, RowFailed, check
from .child import in_child
from .probe import RANK8_WORKERS, Data

# one rank of 8 on a 16-core node: train.py's defaults there (lmdb_dali_train.data: 2 threads, 4 source workers,
# hw_decoder_load 0.91), and DALI's 0.65 they replace
RANK8_THREADS, RANK8_LOADS = 2, (0.65, 0.91)


def dali_options(args: argparse.Namespace, workers: int, load: float, threads: int = 0) -> dict[str, Any]:
    """``PipelineOptions`` as train.py sets them for these flags (fp16 NHWC output on a GPU)."""
    opts = dict(device_id=None if args.cpu else 0, num_threads=threads or args.dali_threads, py_workers=workers)
    return opts | dict(hw_decoder_load=load, fp16_output=not args.cpu, channels_last=True)


def rows(args: argparse.Namespace, d: Data) -> list[Check]:
    decode, found = "CPU decode (--cpu)" if args.cpu else "mixed decode", []
    needs = ("torch", "gpu", "lmdb", "dali", "db")

    def add(key: str, what: str, how: str, needs: tuple[str, ...]) -> None:
        found.append(check(args, "loader", key, what, how, needs, partial(loader_in_child, args, d, key)))

    for load in args.hw_loads:
        for w in args.py_workers:
            options = dali_options(args, w, load).items()
            opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options)
            what = f"DALI pipeline alone, py_workers {w}, hw_decoder_load {load:g}"
            add(f"dali-w{w}-hw{load:g}", what, f"`make_dali_loader({opts})`, {decode}", needs)
        what = f"DALI pipeline alone, in-memory source, hw_decoder_load {load:g}"
        how = f"`DALILoader(MemorySource)`, same graph, py_workers=0, {decode}"
        add(f"memory-hw{load:g}", what, how, (*needs, "memory"))
    for load in RANK8_LOADS:
        options = dali_options(args, RANK8_WORKERS, load, RANK8_THREADS).items()
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options)
        what = f"DALI pipeline alone, one of 8 ranks on 16 cores: {RANK8_THREADS} threads, hw_decoder_load {load:g}"
        add(f"rank8-hw{load:g}", what, f"`make_dali_loader({opts})`, {decode}", needs)
    w, load = max(args.py_workers), args.hw_loads[0]
    what = f"DALI pipeline alone, the decoder's random crop, py_workers {w}, hw_decoder_load {load:g}"
    how = f"as `dali-w{w}-hw{load:g}` with no crop windows from the source: image_random_crop, a coin flip, {decode}"
    add(f"random-w{w}-hw{load:g}", what, how, needs)
    how = (
        f"time per image: `dali-w{w}-hw{load:g}` (ROI decoding of the source's windows) / `random-w{w}-hw{load:g}` - 1"
    )
    found.append(
        check(args, "derived", "roi", "crop windows from the source vs the decoder's random crop", how, (), dict)
    )
    how = "time per image: best `dali-w0` row / `memory` row at its load - 1 (both sources in the pipeline thread)"
    what = "LMDB source cost vs memory, py_workers 0"
    found.append(check(args, "derived", "cost", what, how, (), dict))
    device, pinned = ("cpu", "") if args.cpu else ("cuda:0", "pinned ")
    how = f"`make_torch_loader(workers={args.torch_workers}, device={device}, channels_last=True, dtype=float16)`: "
    how += f"PIL decode, resized_crop of the `train_view` box, flip, uint8 from the workers, {pinned}copy, "
    how += "normalize on the device"
    torch_needs = ("torch", "gpu", "torchvision", "lmdb", "db")
    add("torch", f"torchvision DataLoader alone, {args.torch_workers} workers", how, torch_needs)
    return found


def contender(args: argparse.Namespace, d: Data, key: str) -> Contender:
    """``dali-wW-hwL``, ``memory-hwL`` or ``torch``: a loader-only contender over the built database."""
    import torch

    assert d.db is not None  # run_check runs the rows that need "db" only once it is built
    if key == "torch":
        device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
        options = dict(workers=args.torch_workers, device=device, channels_last=True, dtype=torch.float16)
        return Contender(key, "", "", ours.loader("torch", d.db, args.batch, args.crop, **options))
    load = float(key.rsplit("-hw", 1)[1])
    if key.startswith("random"):
        options = dali_options(args, int(key.split("-w")[1].split("-")[0]), load)
        return Contender(key, "", "", ours.loader("random", d.db, args.batch, args.crop, **options))
    if key.startswith("memory"):
        memory = ours.memory_source(d.db, d.length, args.batch)
        options = dali_options(args, 0, load)
        return Contender(key, "", "", ours.loader("memory", d.db, args.batch, args.crop, memory=memory, **options))
    if key.startswith("rank8"):
        options = dali_options(args, RANK8_WORKERS, load, RANK8_THREADS)
        return Contender(key, "", "", ours.loader("dali", d.db, args.batch, args.crop, **options))
    options = dali_options(args, int(key.split("-w")[1].split("-")[0]), load)
    return Contender(key, "", "", ours.loader("dali", d.db, args.batch, args.crop, **options))


def torch_warmup(args: argparse.Namespace) -> int:
    """Untimed batches of the torchvision row: more than its workers finish before the first is taken."""
    return untimed_batches(args.torch_workers * DATALOADER_PREFETCH, args.warmup_batches)


def time_loader(args: argparse.Namespace, d: Data, key: str) -> dict[str, Any]:
    """Median images/s over ``--runs`` epochs, each on a fresh loader (in a ``bench.gpu_row`` process)."""
    import torch

    sync = None if args.cpu else torch.cuda.synchronize
    warmup = torch_warmup(args) if key == "torch" else args.warmup_batches
    if d.length // args.batch <= warmup:
        batches = d.length // args.batch
        raise RowFailed(f"an epoch of {batches} batches leaves none after {warmup} warm-up (raise --images)")
    c, order, cores = contender(args, d, key), ours.plan_indices(d.length, args.batch), len(os.sched_getaffinity(0))
    rounds = run_rounds([c], args.runs, args.batch, warmup, order, cores=cores, sync=sync)
    return {"rate": rounds.median_rate(key), "result": rounds.spread(key), "warmup_batches": warmup, **rounds.raw()}


def loader_in_child(args: argparse.Namespace, d: Data, key: str, left: float) -> dict[str, Any]:
    assert d.db is not None  # run_check runs the rows that need "db" only once it is built
    spec = {"kind": "loader", "key": key, "db": str(d.db), "length": d.length, "work": str(d.work)}
    spec["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return in_child(spec, min(left, args.row_budget))
