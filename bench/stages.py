"""Where the DALI CPU train pipeline's time goes: the product's train graph cut after each of its stages
(crop windows and flips from ``lmdb_io.reading.augment``, as the LMDB source hands them).

Each cut (``dali_pipeline.pipelines.train_stages``, DALI's resize or the fused operator; a full-frame decode
for reference) runs on the same in-memory JPEGs, as they are and through ``convert.py --max-size 256
--quality 90``, cuts interleaved, round 0 untimed; a stage costs the CPU time per image its cut adds to the
previous one's. Example: ``python -m bench.stages --images 512 --runs 5``
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench.lib import data, entry, machine, ours, results
from bench.lib.comparison import CONVERT_FLAGS
from bench.lib.table import Row, Table
from bench.lib.timing import cpu_snapshot, wait_for_quiet

SETS = {"originals": (), " ".join(CONVERT_FLAGS["lmdb_max256"]): CONVERT_FLAGS["lmdb_max256"]}
GRAPHS = {"DALI's resize": False, "fused resize": True}  # label: PipelineOptions.fused_cpu_resize
REFERENCE = "full-frame decode (reference)"


def build_cuts(payloads: list[np.ndarray], batch: int, threads: int, fused: bool, reference: bool) -> dict[str, Any]:
    """A built CPU pipeline per cut in the graph's order: the reference (where ``reference``), each train stage;
    ``fused``: the graph with the fused resize operator (``RuntimeError`` saying why where it is unavailable)."""
    from nvidia.dali import fn, pipeline_def

    from dali_pipeline import fused_resize
    from dali_pipeline.pipelines import FUSED_TRAIN_STAGES, TRAIN_STAGES, PipelineOptions, full_decode, train_stages
    from dali_pipeline.source import window_arrays
    from lmdb_io.imagecheck import image_size
    from lmdb_io.reading.augment import train_view
    from lmdb_io.reading.presets import TrainPreset

    batches = len(payloads) // batch
    opts = PipelineOptions(batch_size=batch, device_id=None, num_threads=threads, fused_cpu_resize=fused)
    if fused and not opts.uses_fused_resize:
        raise RuntimeError(f"fused resize unavailable: {fused_resize.unavailable_reason()}")
    names = FUSED_TRAIN_STAGES if fused else TRAIN_STAGES
    views = [train_view(TrainPreset(), 0, 0, i, image_size(p.tobytes()) or (1, 1)) for i, p in enumerate(payloads)]
    windows = [window_arrays(view) for view in views]  # as the source hands them: anchor, shape, mirror

    def source(info: Any) -> list[list[np.ndarray]]:
        i = info.iteration % batches
        window = windows[i * batch : (i + 1) * batch]
        return [payloads[i * batch : (i + 1) * batch], *([w[k] for w in window] for k in range(3))]

    def cut(name: str) -> Any:
        @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2, seed=1)
        def pipe() -> Any:
            encoded, *window = fn.external_source(source=source, num_outputs=4, batch=True, batch_info=True)
            if name == REFERENCE:
                return full_decode(encoded, opts)
            return dict(train_stages(encoded, TrainPreset(), opts, window=tuple(window)))[name]

        built = pipe()
        with warnings.catch_warnings():  # a cut before the flip leaves the source's later outputs unused
            warnings.filterwarnings("ignore", message="The external source node")
            built.build()
        return built

    return {name: cut(name) for name in ((REFERENCE,) if reference else ()) + names}


def time_cuts(cuts: dict[str, Any], runs: int, iterations: int, batch: int, cores: int, quiet: Callable) -> dict:
    """Per cut: images/s and CPU microseconds per image (this process: DALI's threads) of each timed round,
    and the share of the CPUs others took while cuts were timed."""
    found: dict[str, dict[str, list[float]]] = {name: {"rate": [], "cpu_us": []} for name in cuts}
    others = []
    for r in range(runs + 1):
        for name in list(cuts) if r % 2 == 0 else list(cuts)[::-1]:
            quiet()
            pipe = cuts[name]
            pipe.run()
            started, (busy, own) = time.perf_counter(), cpu_snapshot()
            for _ in range(iterations):
                pipe.run()
            seconds, (busy_end, own_end) = time.perf_counter() - started, cpu_snapshot()
            if r:
                found[name]["rate"].append(iterations * batch / seconds)
                found[name]["cpu_us"].append((own_end - own) / (iterations * batch) * 1e6)
                others.append(max(0.0, (busy_end - busy) - (own_end - own)) / (seconds * cores))
    return {"cuts": found, "others_share": statistics.median(others) if others else 0.0}


def rows_for(label: str, timed: dict, describe: str) -> list[Row]:
    rows, previous, names = [], None, list(timed["cuts"])
    whole = statistics.median(timed["cuts"][names[-1]]["cpu_us"])
    for name in names:
        rate, cpu = (statistics.median(timed["cuts"][name][k]) for k in ("rate", "cpu_us"))
        if name == REFERENCE:
            added = f"{cpu:,.0f} us/image ({cpu / whole:.0%} of the train graph's)"
        else:
            added = f"+{cpu - (previous or 0.0):,.0f} us/image ({(cpu - (previous or 0.0)) / whole:.0%} of the graph)"
            previous = cpu
        what = f"{label}: {name}" + ("" if name == REFERENCE else " (cumulative cut)")
        rows.append(Row(what, describe, f"{rate:,.0f} img/s; {cpu:,.0f} us CPU/image", rate, ratio=added))
    return rows


@entry
def main(argv: Sequence[str] | None = None) -> int:
    cores, positive = len(os.sched_getaffinity(0)), data.positive
    p = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=positive, default=512, help="JPEGs per data set (default 512)")
    p.add_argument("--runs", type=positive, default=5, help="timed rounds; medians are reported (default 5)")
    p.add_argument("--batch", type=positive, default=64, help="batch size (default 64)")
    p.add_argument("--threads", type=positive, default=cores + 1, help=f"DALI CPU threads (cores + 1, {cores + 1})")
    p.add_argument("--epochs", type=positive, default=2, help="passes over the data per timed round (default 2)")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for quiet before a cut (30)")
    data.add_common_flags(p)
    args = p.parse_args(argv)
    if args.images < args.batch:
        p.error("--images must be at least --batch")
    started, kind = time.monotonic(), machine.kind(machine.describe(gpu=False))
    table = Table(f"Where the DALI CPU train pipeline's time goes ({kind})")
    raw: dict[str, Any] = {}
    quiet = (lambda: wait_for_quiet(cores, 0.1, args.quiet_wait)) if args.quiet_wait > 0 else (lambda: 0.0)
    with data.workdir(args.workdir, "bench_stages_") as work:
        for data_label, flags in SETS.items():
            prepared = data.prepare_database(args.source, args.images, work / data_label.replace(" ", "_"), *flags)
            payloads = ours.memory_source(prepared.db, prepared.tree.images, args.batch).payloads
            iterations = args.epochs * (len(payloads) // args.batch)
            how = f"{prepared.describe()}; batch {args.batch}, {args.threads} DALI threads, crop 224, float32 CHW"
            for n, (graph, fused) in enumerate(GRAPHS.items()):
                label = f"{data_label}, {graph}"
                try:  # the reference is timed with the first graph only
                    cuts = build_cuts(payloads, args.batch, args.threads, fused, reference=n == 0)
                except RuntimeError as e:
                    print(f"{label}: not run: {e}", file=sys.stderr)
                    continue
                timed = time_cuts(cuts, args.runs, iterations, args.batch, cores, quiet)
                raw[label] = timed
                table.rows += rows_for(label, timed, how)
                del cuts
    shares = ", ".join(f"{k}: {v['others_share']:.0%}" for k, v in raw.items())
    table.header = (
        f"Method: each cut of the train graph runs {args.epochs} passes per round over the same in-memory JPEGs, "
        f"cuts interleaved, {args.runs} timed rounds after an untimed one, medians; CPU time is this process's "
        f"(DALI's threads). Others' median share of the CPUs while a cut was timed: {shares}."
    )
    table.headings, table.raw = {"ratio": "stage's cost"}, raw
    status = table.report(args.json)
    command = "python -m bench.stages " + " ".join(argv if argv is not None else sys.argv[1:])
    minutes = (time.monotonic() - started) / 60
    results.rewrite_section(kind, "stages", f"{table.markdown()}\n\nCommand: `{command.strip()}` ({minutes:.0f} min).")
    print(f"rewrote the {kind} stages section of {results.RESULTS}")
    return status


if __name__ == "__main__":
    sys.exit(main())
