"""One command for a GPU machine: the gpu test tier, the DALI pipeline, the torchvision loader and train.py,
in one table (and this GPU's section of bench/RESULTS.md).

The suites of ``bench.lib.gpu`` plan the rows: ``tier``, ``loader`` (on ``--images`` JPEGs of ``--data`` or
generated, in one LMDB) and ``train``. A missing GPU, DALI, lmdb or model makes its rows "not run: <reason>";
failures are rows too; the exit status is 0; ``--budget`` bounds the run. ``--cpu``: a dry run with tiny
sizes that leaves RESULTS.md alone. Examples: ``python -m bench.gpu_check`` (at most 9 minutes on one
H100/H200), ``python -m bench.gpu_check --quick --data /data/imagenet/train``, ``--cpu --out /tmp/dry``.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.lib import data, entry, machine, results
from bench.lib.gpu import loader, report, run_check, tier, train
from bench.lib.gpu.probe import Data, probe, setup_data

SUITES = (tier, loader, train)  # each plans its rows: rows(args, data) -> [Check]
DEFAULTS: dict[str, Any] = dict(images=24576, batch=256, crop=224, steps=60, print_freq=20)
DEFAULTS |= dict(archs=["resnet50", "resnet18"], py_workers=[0, 4], warmup_batches=5)
DEFAULTS |= dict(tests_budget=210.0, row_budget=120.0, budget=540.0)  # all within `make gpu-check`'s 600 s
QUICK = dict(images=16384, steps=30, print_freq=10)
CPU = dict(images=64, batch=8, crop=64, steps=4, print_freq=2, archs=["resnet18"], py_workers=[0, 1], warmup_batches=2)
CPU |= dict(tests_budget=120.0, budget=600.0)


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def _list(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = [kind(s) for s in text.split(",") if s.strip()]
        if not values or any(not low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"a comma-separated list of values in [{low:g}, {high:g}]")
        return list(dict.fromkeys(values))

    return parse


def _flags(values: dict[str, Any]) -> str:
    shown = {k: ",".join(map(str, v)) if isinstance(v, list) else f"{v:g}" for k, v in values.items()}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in shown.items())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores, n = len(os.sched_getaffinity(0)), data.positive
    epilog = f"Defaults: {_flags(DEFAULTS)} (--quick: {_flags(QUICK)}). --cpu: {_flags(CPU)}, device cpu."
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0], epilog=epilog)
    a = p.add_argument
    a("--data", type=Path, metavar="DIR", help="JPEG folder (DIR/<class>/<image>); default: generated")
    a("--work", type=Path, metavar="DIR", help="JPEGs, the LMDB and train.py runs (default: a temp dir)")
    out = Path(os.environ.get("OUT") or data.REPO / "bench" / "results")
    a("--out", type=Path, default=out, help="for gpu_check.json and the tier's output ($OUT, else bench/results)")
    a("--cpu", action="store_true", help="dry run on the CPU with tiny sizes (DALI CPU operators)")
    a("--quick", action="store_true", help="half the images and steps")
    a("--images", type=n, help="JPEGs in the LMDB (loader-only epoch = images / batch batches)")
    a("--steps", type=n, help="train.py --max-steps for each training row")
    a("--print-freq", type=n, help="train.py --print-freq (the first window is warm-up)")
    a("--batch", type=n, help="batch size (default 256)")
    a("--crop", type=n, help="crop size (default 224)")
    a("--archs", type=lambda t: [s for s in t.split(",") if s], help="models of the training rows (resnet50,resnet18)")
    a("--hw-loads", type=_list(float, 0, 1), default=[0.65, 1.0], help="hw_decoder_load of the DALI rows (0.65,1.0)")
    a("--hw-decoder-load", type=float, default=0.65, help="train.py --hw-decoder-load (default 0.65)")
    a("--py-workers", type=_list(int, 0, 256), help="DALI source processes of the loader rows (0,4)")
    a("--dali-threads", type=n, default=min(8, cores), help=f"DALI CPU threads (min(8, cores) = {min(8, cores)})")
    a("--torch-workers", type=n, default=cores, help=f"DataLoader workers, loader rows and train.py -j ({cores})")
    a("--runs", type=n, default=1, help="loader-only epochs per row, median reported (default 1)")
    a("--warmup-batches", type=n, help="untimed batches per loader-only epoch (5; torchvision: >= workers x 2 + 1)")
    a("--budget", type=float, help="seconds for the whole run, test tier included; rows that would not fit are not run")
    a("--tests-budget", type=float, help=f"seconds for the gpu test tier ({tier.GPU_TESTS}, run first; 0: not run)")
    a("--row-budget", type=float, help="seconds for each loader-only row's process, killed after (default 120)")
    args = p.parse_args(argv)
    for name, value in (DEFAULTS | (QUICK if args.quick else {}) | (CPU if args.cpu else {})).items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    if not args.archs:
        p.error("--archs must not be empty")
    if args.steps < 2 * args.print_freq:
        p.error("--steps must be at least 2 x --print-freq: the first print window is warm-up, left out")
    if args.images // args.batch <= args.warmup_batches:
        p.error(f"--images {args.images} gives {args.images // args.batch} batches: need more than --warmup-batches")
    if not 0 <= args.hw_decoder_load <= 1 or args.tests_budget < 0 or args.row_budget <= 0:
        p.error("--hw-decoder-load must be in [0, 1], --tests-budget >= 0 and --row-budget > 0")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: not a directory")
    return args


@entry
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    info, missing = probe(args)
    print(machine.line(info), flush=True)
    for need, reason in missing.items():
        log(f"missing {need}: {reason}")
    with data.workdir(args.work, "gpu_check_") as work:
        d = Data(work)
        checks = [c for suite in SUITES for c in suite.rows(args, d)]
        for i, check in enumerate(checks):
            if i == 1:  # after the test tier, which needs no data
                setup_data(args, missing, d)
                log(f"data: {d.description}")
                if d.shm:
                    log(f"warning: {d.shm}")
            run_check(check, missing, started + args.budget, args.budget)
            report.set_ratios(checks[: i + 1])
            log(f"[{i + 1}/{len(checks)}] {check.row.what}: {check.row.result} ({check.seconds:.0f} s)")
            table = report.render(args, info, d, checks[: i + 1])
            table.save(args.out / "gpu_check.json")  # rewritten after each row
    table.report(None)
    if not args.cpu:
        command = " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)])
        png = results.publish(table, machine.kind(info), "gpu-check", command, time.monotonic() - started)
        log(f"rewrote the {machine.kind(info)} gpu-check section of {results.RESULTS} and {png}")
    log(f"wrote {args.out / 'gpu_check.json'}")
    print(report.summary(checks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
