"""`make bench`: every benchmark on one data set: one table, JSON, a bar chart and bench/RESULTS.md's section.

Runs ``bench.convert`` and ``bench.loaders`` as subprocesses, then train.py (synthetic, DALI, torch; read
by bench.lib.runlog's one warm-up rule), on ``--data`` (default: hymenoptera where it is beside the checkout,
else the demo's JPEGs). Writes ``OUT/bench.json`` and ``OUT/bench.md`` and, unless ``--quick``, this machine
kind's ``make-bench`` section of bench/RESULTS.md with its chart. ``python -m bench.all [--data DIR] [--quick]``
"""

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.lib import BenchError, data, entry, machine, results, runlog
from bench.lib.table import Table

# each suite's flags: (make bench, --quick); the loaders take 5 rounds: with 15 batches an epoch, 3 left the
# LMDB-vs-memory verdict (a 1% cost against a <= 5% target) to run-to-run spread
SIZES = {
    "convert": ("--images 5000 --runs 3 --rss-sizes 5000,20000", "--images 500 --runs 1 --rss-sizes 500,2000"),
    "loaders": ("--images 1000 --runs 5 --quiet-wait 60", "--images 256 --runs 1 --quiet-wait 0"),
}


def suite(name: str, work: Path, *flags: str) -> Table:
    """``python -m bench.NAME FLAGS --json WORK/NAME.json``, its table read back."""
    json_path = work / f"{name}.json"
    cmd = [sys.executable, "-m", f"bench.{name}", *flags, "--json", str(json_path)]
    if subprocess.run(cmd, cwd=data.REPO).returncode:
        raise BenchError(f"python -m bench.{name} failed (its error above)")
    return Table.load(json_path)


def default_source() -> Path:
    """Real photos when the hymenoptera set is beside the checkout (the issue's ratios are measured on
    real JPEGs), else the demo's generated ones."""
    return data.HYMENOPTERA if data.HYMENOPTERA.is_dir() else data.demo_folder(data.REPO / "demo-data" / "images")[0]


@entry
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="a JPEG tree (default: hymenoptera if beside, else the demo's images)")
    p.add_argument("--out", type=Path, default=data.REPO / "bench" / "results", help="for bench.json and bench.md")
    p.add_argument("--quick", action="store_true", help="fewer images and runs: a smoke check, RESULTS.md untouched")
    args = p.parse_args(argv)
    started = time.monotonic()
    info = machine.describe()
    gpu = "gpu" in info
    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        work = Path(tmp)
        source = args.data or default_source()
        quick = args.quick
        convert, loaders = (suite(n, work, "--source", str(source), *SIZES[n][quick].split()) for n in SIZES)
        db = work / "train.lmdb"
        data.run_checked(data.convert_cmd(source, db))
        crop, batch, steps = (224, 256, 30) if gpu else (112, 32, 30)
        steps = 6 if quick else steps
        model = ["-a", "resnet18", "-b", str(batch), "--crop-size", str(crop), "--max-steps", str(steps)]
        model += ["--print-freq", str(max(1, steps // 3)), "--epochs", "1000"]
        model += ["--amp", "bf16", "--channels-last"] if gpu else []
        train = []
        for name in ("synthetic", "dali", "torch"):
            flags = runlog.variant_flags(name, db) + model
            train.append(runlog.train_row(f"train: resnet18, {name}", flags, work / f"train-{name}"))
            train[-1].how = train[-1].how.replace(str(db), "DB")
        runlog.ratios_to_synthetic(train)
    title = f"make bench on {source.name}: {info['cpu']}, {info['cores_usable']} cores, {info.get('gpu', 'no GPU')}"
    header = f"{machine.line(info)}\nData: the JPEGs of {source}. "
    header += f"Converter and reader: {convert.header.splitlines()[-1]}"
    header += f"\nLoaders: {' '.join(loaders.header.splitlines()[1:])}"
    header += f"\nTraining: resnet18, batch {batch}, crop {crop}, {steps} steps per run; {runlog.RULE}"
    table = Table(title, header, convert.rows + loaders.rows + train, {"machine": info, "data": str(source)})
    table.headings = {"result": "images/s (reads/s)"}
    table.report(args.out / "bench.json")
    (args.out / "bench.md").write_text(table.markdown() + "\n")
    if not quick:
        command = "make bench" + (f" DATA={args.data}" if args.data else "")
        png = results.publish(table, machine.kind(info), "make-bench", command, time.monotonic() - started)
        print(f"rewrote the {machine.kind(info)} make-bench section of {results.RESULTS} and {png}")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
