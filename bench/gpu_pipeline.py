#!/usr/bin/env python3
"""GPU pipeline-only benchmark: the DALI train pipeline (mixed decode) from an LMDB, no model.

Converts a JPEG folder (``--data DIR``; without it hymenoptera beside the checkout, or generated JPEGs)
into an LMDB in a temp dir, replicating files by hard links up to ``--images``, then times the DALI
train pipeline on one GPU for every ``--py-workers`` x ``--hw-loads`` combination, and the same graph
fed the same JPEG bytes from memory, with ``torch.cuda.synchronize()`` before each clock read, the
first ``--warmup-batches`` of each run untimed, contenders interleaved run by run on fresh pipelines.
Prints a Markdown table of images/s and writes ``gpu_pipeline.json`` and ``gpu_pipeline.md`` to
``--out DIR``. ``--cpu`` runs the same code on DALI's CPU operators with tiny sizes (a dry run for
machines without a GPU). Examples::

    python bench/gpu_pipeline.py --out bench/results/h100
    python bench/gpu_pipeline.py --data /data/imagenet/train --images 32768 --py-workers 0,4,8 --out /tmp/res
    python bench/gpu_pipeline.py --cpu --out /tmp/dry
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `lmdb_io` and `dali_pipeline` importable
    sys.path.insert(0, str(REPO))

PROG = "gpu_pipeline"

# Only light modules at the top (numpy, lmdb_io.shard): DALI's parallel source spawns workers that
# re-import this file.
try:
    from bench.bench_loaders import (
        DEFAULT_SOURCE,
        MB,
        Contender,
        Rounds,
        Row,
        interference,
        memory_source_class,
        render,
        run_rounds,
        spread,
        warm_page_cache,
    )
except ImportError as exc:
    if __name__ != "__main__":
        raise
    print(
        f"{PROG}: cannot import the benchmark helpers ({type(exc).__name__}: {exc}); run it with the "
        f"project's environment (numpy, lmdb, torch, DALI)",
        file=sys.stderr,
    )
    sys.exit(2)
SYNTHETIC_IMAGES = 256  # distinct generated JPEGs when no dataset is at hand; replicated by hard links


class Unavailable(Exception):
    """A missing prerequisite (no GPU, no DALI, ...): reported as one line, exit status 2."""


# -- prerequisites ----------------------------------------------------------------------------------


def check_environment(cpu: bool, device_id: int) -> dict[str, Any]:
    """Import what the benchmark needs and find the GPU; ``Unavailable`` with a one-line reason if not."""
    info: dict[str, Any] = {}
    try:
        import nvidia.dali as dali
        from nvidia.dali import backend
    except Exception as e:  # ImportError, or a broken install raising something else
        raise Unavailable(
            f"NVIDIA DALI is not importable ({type(e).__name__}: {e}); install nvidia-dali-cuda120 "
            f"or -cuda130 (pip) or use an NGC container"
        ) from None
    info["dali"] = dali.__version__
    try:
        import lmdb
        import torch
    except Exception as e:
        raise Unavailable(f"a dependency is missing ({type(e).__name__}: {e})") from None
    info["torch"], info["py_lmdb"] = torch.__version__, lmdb.__version__
    try:
        import dali_pipeline  # noqa: F401  (imports torchvision through lmdb_io.torch_loader)
    except Exception as e:
        raise Unavailable(f"dali_pipeline does not import ({type(e).__name__}: {e})") from None
    if cpu:
        info["gpu"] = "none (--cpu: DALI CPU operators)"
        return info
    if not torch.cuda.is_available():
        raise Unavailable(
            "no CUDA GPU visible to torch (torch.cuda.is_available() is False); run on a GPU "
            "machine, or pass --cpu for the CPU dry run"
        )
    try:
        count = backend.GetCUDADeviceCount()
    except Exception as e:
        raise Unavailable(f"DALI cannot query CUDA devices ({type(e).__name__}: {e})") from None
    if count == 0:
        raise Unavailable(
            "DALI sees no CUDA device (driver too old for this DALI wheel?); pass --cpu for the CPU dry run"
        )
    if not 0 <= device_id < min(count, torch.cuda.device_count()):
        raise Unavailable(f"--device-id {device_id}: only {count} CUDA device(s) visible")
    torch.cuda.set_device(device_id)
    props = torch.cuda.get_device_properties(device_id)
    info.update(
        gpu=props.name,
        gpu_memory_gib=round(props.total_memory / (1 << 30), 1),
        cuda=torch.version.cuda,
        driver=_driver_version(),
    )
    return info


def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": models[0] if models else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) * 1024


# -- data -------------------------------------------------------------------------------------------


def prepare_database(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """An lmdb_io database to read and a description of where its images came from."""
    from bench.bench_lmdb import build_tree, convert_cmd, find_jpegs, run_checked

    if args.data is not None and (args.data / "data.mdb").is_file():
        from lmdb_io.database import ImageDatabase

        return args.data, f"the existing database {args.data} ({len(ImageDatabase(args.data, verify=False))} images)"
    if args.data is not None:
        source, origin = args.data, str(args.data)
    elif DEFAULT_SOURCE.is_dir():
        source, origin = DEFAULT_SOURCE, f"{DEFAULT_SOURCE.name} (beside the checkout)"
    else:
        from lmdb_io.synthetic import make_image_folder

        source = workdir / "synthetic"
        classes = 4
        make_image_folder(str(source), classes=classes, per_class=math.ceil(SYNTHETIC_IMAGES / classes))
        origin = f"{SYNTHETIC_IMAGES} generated JPEGs (lmdb_io.synthetic; no dataset found)"
    jpegs = find_jpegs(source)
    tree = build_tree(jpegs, workdir / "tree", args.images)
    db = workdir / "train.lmdb"
    run_checked(convert_cmd(tree, db))
    shutil.rmtree(tree.root)
    how = "hard links" if tree.linked else "copies"
    return db, (
        f"{args.images} JPEGs ({tree.nbytes / MB:,.1f} MB, {how} cycling through {len(jpegs)} files of {origin})"
    )


# -- contenders -------------------------------------------------------------------------------------


def make_contenders(db: Path, memory: Any, args: argparse.Namespace) -> list[Contender]:
    from dali_pipeline import DALILoader, PipelineOptions, make_dali_loader

    device_id = None if args.cpu else args.device_id
    common = dict(num_threads=args.threads, crop=args.crop, prefetch=args.prefetch)

    def lmdb_loader(py_workers: int, load: float) -> Callable[[int], Iterable]:
        return lambda seed: make_dali_loader(
            db,
            args.batch,
            train=True,
            seed=seed,
            device_id=device_id,
            py_workers=py_workers,
            hw_decoder_load=load,
            **common,
        )

    def memory_loader(load: float) -> Callable[[int], Iterable]:
        def make(seed: int) -> Iterable:
            source = memory_source_class()(memory.payloads, memory.labels, args.batch, seed=seed)
            opts = PipelineOptions(
                batch_size=args.batch, device_id=device_id, py_workers=0, hw_decoder_load=load, seed=seed, **common
            )
            return DALILoader(source, opts, train=True)

        return make

    decode = "CPU decode" if args.cpu else "mixed decode"
    contenders = []
    for load in args.hw_loads:
        for w in args.py_workers:
            contenders.append(
                Contender(
                    f"lmdb_w{w}_hw{load:g}",
                    f"LMDB source, py_workers={w}, hw_decoder_load={load:g}",
                    f"`make_dali_loader(device_id={device_id}, py_workers={w}, hw_decoder_load={load:g})`, {decode}",
                    lmdb_loader(w, load),
                )
            )
        if memory is not None:
            contenders.append(
                Contender(
                    f"memory_w0_hw{load:g}",
                    f"in-memory source, py_workers=0, hw_decoder_load={load:g}",
                    f"`DALILoader(MemorySource)`, same graph, {decode}",
                    memory_loader(load),
                )
            )
    return contenders


def build_rows(contenders: Sequence[Contender], rounds: Rounds) -> list[Row]:
    rows = []
    for c in contenders:
        mem_key = f"memory_w0_hw{c.key.rsplit('_hw', 1)[1]}"
        ratio = (
            f"{rounds.median_ratio(c.key, mem_key):.2f}x vs memory"
            if mem_key in rounds.timings and c.key != mem_key
            else ""
        )
        rows.append(Row(c.what, c.how, spread(rounds, c.key), ratio, "(info)", ""))
    lmdb_keys = [c.key for c in contenders if c.key.startswith("lmdb_")]
    best = max(lmdb_keys, key=rounds.median_rate)
    mem_key = f"memory_w0_hw{best.rsplit('_hw', 1)[1]}"
    if mem_key in rounds.timings:
        cost = rounds.median_ratio(mem_key, best) - 1
        rows.append(
            Row(
                "LMDB source cost vs memory: best LMDB setting",
                f"`{best}` vs `{mem_key}`: time per image ratio - 1, per run",
                f"{rounds.median_rate(best):,.0f} vs {rounds.median_rate(mem_key):,.0f}",
                f"{cost * 100:+.1f} %",
                "<= 10 %",
                "yes" if cost <= 0.10 else "**no**",
            )
        )
    return rows


def header(info: dict[str, Any], args: argparse.Namespace, data: str, rounds: Rounds, batches: int) -> str:
    gpu = (
        f"GPU {info['gpu']} ({info.get('gpu_memory_gib', '?')} GiB, driver {info.get('driver', '?')}, "
        f"CUDA {info.get('cuda', '?')})"
        if not args.cpu
        else "NO GPU: --cpu dry run on DALI CPU operators"
    )
    return (
        f"### DALI train pipeline benchmark{' (CPU DRY RUN)' if args.cpu else ''}\n\n"
        f"Machine: {gpu}; {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
        f"{info['memory_gib']} GiB RAM; Python {info['python']}, DALI {info['dali']}, torch {info['torch']}.\n"
        f"Data: {data}; one LMDB ({info['db_bytes'] / MB:,.1f} MB), hot page cache.\n"
        f"Method: one train epoch per run (batch {args.batch}, crop {args.crop}, {batches} batches, DALI threads "
        f"{args.threads}, prefetch {args.prefetch}), first {args.warmup_batches} batches untimed, "
        f"{'torch.cuda.synchronize() before each clock read, ' if not args.cpu else ''}contenders interleaved "
        f"run by run on fresh pipelines; images/s is the median (min-max) of {len(rounds.used)} runs; "
        f"pipeline only, no model. {interference(rounds, info['cores_usable'])}"
    )


# -- main -------------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace, workdir: Path, info: dict[str, Any]) -> dict[str, Any]:
    from lmdb_io.database import ImageDatabase
    from lmdb_io.shard import epoch_plan

    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.quiet else (lambda s: None)
    db, data = prepare_database(args, workdir)
    log(f"{PROG}: database {db} from {data}")
    warm_page_cache(db)
    length = len(ImageDatabase(db, verify=False))
    batches = length // args.batch
    if batches <= args.warmup_batches:
        raise Unavailable(
            f"{length} images give {batches} batches of {args.batch}: need more than "
            f"--warmup-batches ({args.warmup_batches}); raise --images"
        )
    info["db_bytes"] = os.path.getsize(db / "data.mdb")
    memory = None
    if args.memory:
        if info["db_bytes"] * 2 > available_memory():
            log(
                f"{PROG}: the database ({info['db_bytes'] / MB:,.0f} MB) does not fit twice in free memory; "
                f"no in-memory rows"
            )
        else:
            memory = memory_source_class().from_database(db, args.batch)
    sync = None
    if not args.cpu:
        import torch

        sync = torch.cuda.synchronize

    def expected(seed: int) -> list[int]:
        return epoch_plan(length, 0, 1, 0, seed, True, args.batch, True).indices.tolist()

    contenders = make_contenders(db, memory, args)
    cores = len(os.sched_getaffinity(0))
    rounds = run_rounds(
        contenders,
        args.runs,
        args.batch,
        args.warmup_batches,
        expected,
        cores=cores,
        max_foreign=1.0,
        sync=sync,
        log=log,
    )
    rows = build_rows(contenders, rounds)
    table = render(rows, header(info, args, data, rounds, batches))
    return {
        "machine": info,
        "table": table,
        "data": data,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "images_in_db": length,
        "batches_per_epoch": batches,
        "median_images_per_s": {c.key: rounds.median_rate(c.key) for c in contenders},
        "runs": {
            key: [
                {
                    "batches": t.batches,
                    "timed_images": t.images,
                    "seconds": t.seconds,
                    "images_per_s": t.rate,
                    "host_cores_used": t.cores_used,
                    "others_cpu_share": t.foreign_share(cores),
                }
                for t in ts
            ]
            for key, ts in rounds.timings.items()
        },
        "contenders": {c.key: {"what": c.what, "how": c.how} for c in contenders},
        "rows": [asdict(r) for r in rows],
    }


def _ints(text: str) -> list[int]:
    values = [int(s) for s in text.split(",") if s.strip()]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of counts >= 0")
    return list(dict.fromkeys(values))


def _loads(text: str) -> list[float]:
    values = [float(s) for s in text.split(",") if s.strip()]
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of shares in [0, 1]")
    return list(dict.fromkeys(values))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(
        prog="gpu_pipeline.py",
        description=__doc__.split("\n\n")[0],
        epilog="--cpu changes the defaults to: --images 384 --batch 32 --py-workers 0,1 "
        "--runs 1 --warmup-batches 2 --threads 2 --crop 64",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="JPEG folder (DIR/<class>/<image>, any depth), or an existing lmdb_io database "
        "(used as is); default: hymenoptera beside the checkout, else generated JPEGs",
    )
    p.add_argument(
        "--images",
        type=int,
        help="JPEGs in the database, cycling through the folder's files by hard links (default 32768)",
    )
    p.add_argument("--batch", type=int, help="batch size (default 256)")
    p.add_argument("--crop", type=int, help="train crop size (default 224)")
    p.add_argument("--py-workers", type=_ints, metavar="N,N", help="parallel-source worker counts (default 0,4,8)")
    p.add_argument(
        "--hw-loads",
        type=_loads,
        default=[0.65, 1.0],
        metavar="X,X",
        help="hw_decoder_load values (default 0.65,1.0; no effect with --cpu or without a hardware JPEG decoder)",
    )
    p.add_argument("--threads", type=int, help=f"DALI CPU threads (default min(8, usable cores) = {min(8, cores)})")
    p.add_argument("--prefetch", type=int, default=2, help="pipeline prefetch queue depth (default 2)")
    p.add_argument("--runs", type=int, help="timed runs per contender; the median is reported (default 3)")
    p.add_argument("--warmup-batches", type=int, help="untimed batches at the start of each run (default 5)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the in-memory source rows")
    p.add_argument("--device-id", type=int, default=0, help="CUDA device (default 0)")
    p.add_argument("--cpu", action="store_true", help="dry run: device_id=None (DALI CPU operators), tiny sizes")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="folder for gpu_pipeline.json and gpu_pipeline.md (default bench/results)",
    )
    p.add_argument("--workdir", type=Path, help="where the tree and database go (default: a temp dir, deleted after)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run log on stderr")
    args = p.parse_args(argv)
    defaults = (
        dict(images=384, batch=32, crop=64, py_workers=[0, 1], runs=1, warmup_batches=2, threads=min(2, cores))
        if args.cpu
        else dict(
            images=32768, batch=256, crop=224, py_workers=[0, 4, 8], runs=3, warmup_batches=5, threads=min(8, cores)
        )
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.images, args.batch, args.crop, args.runs, args.warmup_batches, args.threads, args.prefetch) < 1:
        p.error("--images, --batch, --crop, --runs, --warmup-batches, --threads and --prefetch must be positive")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: not a directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        info = {**machine(), **check_environment(args.cpu, args.device_id)}
        temp = args.workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="gpu_pipeline_")) if temp else args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = run_benchmark(args, workdir, info)
        finally:
            if temp:
                shutil.rmtree(workdir, ignore_errors=True)
    except Unavailable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    print(result["table"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_pipeline.md").write_text(result["table"] + "\n")
    print(f"\nwrote {args.out / 'gpu_pipeline.json'} and {args.out / 'gpu_pipeline.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
