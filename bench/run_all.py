#!/usr/bin/env python3
"""`make bench`: every benchmark in bench/ on one data set, one Markdown table, JSON and a bar chart.

Runs the converter/reader benchmark (bench_lmdb.py), the loader-only benchmark (bench_loaders.py) and
end-to-end training through train.py (``--synthetic``, ``--loader dali --lmdb``, ``--loader torch
--lmdb``), all on the JPEGs of ``--data`` (default: the demo's generated ImageFolder), side by side in
one run. Each figure is a median of several runs (see each benchmark's own header). Writes
``OUT/bench.json`` and ``OUT/bench.png``.

    python bench/run_all.py [--data DIR] [--out bench/results] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmdb_io.synthetic import make_image_folder  # noqa: E402 (needs the sys.path insert above)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def python(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def demo_data(work: Path) -> Path:
    root = REPO / "demo-data" / "images" / "train"
    make_image_folder(str(root), classes=4, per_class=60, seed=0)
    return root


def train_rows(data: Path, work: Path, steps: int, gpu: bool) -> list[dict[str, Any]]:
    """Training images/s and data-wait through train.py, first print window (warm-up) excluded."""
    db = work / "train.lmdb"
    python("convert.py", "--dataset", str(data), "-o", str(db), "-q", "--overwrite")
    crop, batch = (224, 256) if gpu else (112, 32)
    common = [
        "-a",
        "resnet18",
        "-b",
        str(batch),
        "--crop-size",
        str(crop),
        "--max-steps",
        str(steps),
        "--print-freq",
        str(max(1, steps // 3)),
        "--epochs",
        "1000",
    ]
    if gpu:
        common += ["--amp", "bf16", "--channels-last"]
    variants = {
        "synthetic": ["--synthetic", "--lmdb", "--train", str(db)],
        "dali": ["--loader", "dali", "--lmdb", "--train", str(db)],
        "torch": ["--loader", "torch", "--lmdb", "--train", str(db)],
    }
    rows = []
    for name, flags in variants.items():
        out = work / f"train-{name}"
        python("train.py", *flags, *common, "--output-dir", str(out))
        windows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        windows = [w for w in windows if w["event"] == "train"][1:]
        rows.append(
            {
                "what": f"train: resnet18, {name}",
                "how": f"train.py {' '.join(flags[:-2])} -b {batch}, crop {crop}, {steps} steps",
                "images_per_s": statistics.median(w["images_per_s"] for w in windows),
                "data_wait": statistics.median(w["data_wait"] for w in windows),
            }
        )
    synthetic = rows[0]["images_per_s"]
    for row in rows:
        row["ratio"] = f"{row['images_per_s'] / synthetic:.2f}x vs synthetic"
    return rows


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (r["what"], r["images_per_s"])
        for r in rows
        if isinstance(r.get("images_per_s"), (int, float)) and not r["what"].startswith(("convert", "random read"))
    ]  # loaders and training: images/s
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.5))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="#76b900")
    for i, (_, value) in enumerate(bars[::-1]):
        ax.text(value, i, f" {value:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("images/s")
    ax.set_title(textwrap.fill(title, 110), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _rate(text: str) -> Any:
    """A throughput cell ("5,436 img/s", "802 (767-844)") as a number; any other cell as it is."""
    match = re.fullmatch(r"([\d,.]+) (?:img/s|reads/s|\([\d,.]+-[\d,.]+\))", text.strip())
    return float(match.group(1).replace(",", "")) if match else text


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="a JPEG ImageFolder tree (default: the demo's generated one)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--quick", action="store_true", help="fewer images and runs (a smoke check, not figures)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or demo_data(work)
        runs = "1" if args.quick else "3"
        python(
            "bench/bench_lmdb.py",
            "--source",
            str(data),
            "--images",
            "500" if args.quick else "5000",
            "--runs",
            runs,
            "--rss-sizes",
            "500,2000" if args.quick else "5000,20000",
            "--json",
            str(work / "lmdb.json"),
        )
        python(
            "bench/bench_loaders.py",
            "--source",
            str(data),
            "--images",
            "256" if args.quick else "2048",
            "--runs",
            runs,
            "--quiet-wait",
            "0" if args.quick else "60",
            "--json",
            str(work / "loaders.json"),
        )
        rows: list[dict[str, Any]] = []
        for name in ("lmdb.json", "loaders.json"):
            for row in json.loads((work / name).read_text())["rows"]:
                value = row.get("images_per_s") or row.get("result", "")
                rows.append(
                    {
                        "what": row["what"],
                        "how": row["how"],
                        "images_per_s": _rate(value),
                        "mb_per_s": row.get("mb_per_s", ""),
                        "ratio": row.get("ratio", ""),
                        "data_wait": None,
                    }
                )
        rows += train_rows(data, work, 6 if args.quick else 30, gpu)
    title = f"make bench on {data}: {machine()}"
    lines = [
        f"### {title}",
        "",
        "| what | how | images/s (reads/s) | MB/s | ratio | data-wait |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ips = r["images_per_s"]
        rate = f"{ips:,.0f}" if isinstance(ips, (int, float)) else ips
        wait = "" if r.get("data_wait") is None else f"{100 * r['data_wait']:.0f}%"
        lines.append(f"| {r['what']} | {r['how']} | {rate} | {r.get('mb_per_s', '')} | {r['ratio']} | {wait} |")
    table = "\n".join(lines)
    print("\n" + table)
    (args.out / "bench.json").write_text(json.dumps({"machine": machine(), "data": str(data), "rows": rows}, indent=2))
    (args.out / "bench.md").write_text(table + "\n")
    chart(rows, args.out / "bench.png", title)
    print(f"\nwrote {args.out / 'bench.json'}, {args.out / 'bench.md'} and {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
