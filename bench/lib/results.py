"""bench/RESULTS.md: one section per machine kind and runner, between ``<!-- BEGIN kind runner -->`` and
``<!-- END kind runner -->``; a runner rewrites only its own section, and its bar chart beside the file."""

import re
import textwrap
from pathlib import Path

from .data import REPO
from .table import Table

RESULTS = REPO / "bench" / "RESULTS.md"
PLACEHOLDER = "gpu not-measured"  # the GPU section until a GPU run writes its own


def rewrite_section(kind: str, runner: str, body: str, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"<!-- BEGIN {kind} {runner} -->\n{body.strip()}\n<!-- END {kind} {runner} -->"
    pattern = re.compile(
        rf"<!-- BEGIN {re.escape(kind)} {re.escape(runner)} -->.*?<!-- END {re.escape(kind)} {re.escape(runner)} -->",
        re.S,
    )
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    if kind.startswith("gpu-"):
        text = re.sub(rf"<!-- BEGIN {PLACEHOLDER} -->.*?<!-- END {PLACEHOLDER} -->\n*", "", text, flags=re.S)
    path.write_text(text)


OURS, OTHERS, NOT_RUN = "#76b900", "#8c8c8c", "#d0d0d0"
TRAIN = ("train:", "training ")  # row names of training runs (bench.all; bench.gpu_check)
OTHERS_FIRST = ("baseline", "tar", "FFCV", "LitData", "WebDataset")  # labels of bars that are not this project


def panels(table: Table) -> list[tuple[str, str, list[tuple[str, float | None, str]]]]:
    """The chart's panels, each (title, x label, bars of (label, value or None when not run, annotation)):
    the converter against the original algorithm and tar, the loaders against their peers, and training
    as a fraction of ``--synthetic`` (each kind has its own scale)."""
    Bars = list[tuple[str, float | None, str]]
    convert: Bars = []
    loaders: Bars = []
    train: Bars = []
    for r in table.rows:
        if r.what.startswith("convert:") and r.rate:
            convert.append((r.what.removeprefix("convert: "), r.rate, f"{r.rate:,.0f}"))
        elif r.what.startswith(TRAIN) and r.rate:
            train.append((r.what.removeprefix("train: ").removeprefix("training "), r.rate, ""))
        elif r.rate and not r.what.startswith(("random read", "convert")):
            loaders.append((r.what, r.rate, f"{r.rate:,.0f}"))
        elif r.result.startswith("not run") and not r.what.startswith(("DALI CPU / FFCV", "time to")):
            loaders.append((r.what, None, r.result))
    # each model against its own synthetic run: labels read "MODEL, LOADER" (bench.all, bench.gpu_check)
    synthetic = {label.split(",")[0]: v for label, v, _ in train if label.endswith(", synthetic") and v}
    train = [
        (label, v / synthetic[model], f"{v / synthetic[model]:.2f}x ({v:,.1f} img/s)")
        for label, v, _ in train
        if v and (model := label.split(",")[0]) in synthetic
    ]
    found = [
        ("Converter: images/s (higher is better)", "images/s", convert),
        ("Train loaders alone: images/s, same images and cores (higher is better)", "images/s", loaders),
        ("Training: images/s as a fraction of --synthetic (1.0 = no data cost)", "fraction of synthetic", train),
    ]
    return [panel for panel in found if panel[2]]


def chart(table: Table, path: Path) -> bool:
    """One horizontal bar panel per kind (``panels``); this project's bars green, the others grey."""
    found = panels(table)
    if not found:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(bars) + 1.2 for _, _, bars in found]
    fig, axes = plt.subplots(
        len(found), 1, figsize=(11, 0.32 * sum(heights) + 1.2), height_ratios=heights, layout="constrained"
    )
    for ax, (title, xlabel, bars) in zip(axes if len(found) > 1 else [axes], found, strict=True):
        labels = [textwrap.shorten(label, 95, placeholder=" ...") for label, _, _ in bars][::-1]
        values = [v or 0.0 for _, v, _ in bars][::-1]
        colors = [NOT_RUN if v is None else OTHERS if label.startswith(OTHERS_FIRST) else OURS for label, v, _ in bars][
            ::-1
        ]
        ax.barh(range(len(bars)), values, color=colors)
        ax.set_yticks(range(len(bars)), labels, fontsize=7)
        top = max(values) or 1.0
        for i, (_, _, note) in enumerate(bars[::-1]):
            ax.text(values[i] + top * 0.01, i, note, va="center", fontsize=7)
        ax.set_xlim(0, top * 1.3)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    from matplotlib.patches import Patch

    legend = [Patch(color=OURS, label="this project"), Patch(color=OTHERS, label="baseline, tar, peers")]
    fig.legend(handles=legend, loc="outside upper right", fontsize=7, ncols=2, frameon=False)
    fig.suptitle(textwrap.fill(table.title, 120), fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def publish(table: Table, kind: str, runner: str, command: str, seconds: float) -> Path:
    """The table as ``kind runner``'s section of RESULTS.md, with its chart ``bench/results-KIND-RUNNER.png``."""
    png = RESULTS.parent / f"results-{kind}-{runner}.png"
    link = f"\n\n![{runner} on {kind}]({png.name})" if chart(table, png) else ""
    rewrite_section(kind, runner, f"{table.markdown()}\n\nCommand: `{command}` ({seconds / 60:.0f} min).{link}")
    return png
