"""bench/RESULTS.md: one section per machine kind and runner, between ``<!-- BEGIN kind runner -->`` and
``<!-- END kind runner -->``; a runner rewrites only its own section, and its bar chart beside the file."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from .data import REPO
from .table import Table

RESULTS = REPO / "bench" / "RESULTS.md"
PLACEHOLDER = "gpu not-measured"  # the GPU section until a GPU run writes its own


def rewrite_section(kind: str, runner: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section ``kind runner`` of ``path`` with ``body`` (appended when new)."""
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


def chart(table: Table, path: Path) -> bool:
    """A horizontal bar per images/s row (loaders and training; converter and reads have other scales)."""
    bars = [(r.what, r.rate) for r in table.rows if r.rate and not r.what.startswith(("convert", "random read"))]
    if not bars:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.5))
    ax.barh([textwrap.shorten(b[0], 70) for b in bars][::-1], [b[1] for b in bars][::-1], color="#76b900")
    for i, (_, value) in enumerate(bars[::-1]):
        ax.text(value, i, f" {value:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("images/s")
    ax.set_title(textwrap.fill(table.title, 110), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def publish(table: Table, kind: str, runner: str, command: str, seconds: float) -> Path:
    """The table as ``kind runner``'s section of RESULTS.md, with its chart ``bench/results-KIND-RUNNER.png``."""
    png = RESULTS.parent / f"results-{kind}-{runner}.png"
    link = f"\n\n![{runner} on {kind}]({png.name})" if chart(table, png) else ""
    rewrite_section(kind, runner, f"{table.markdown()}\n\nCommand: `{command}` ({seconds / 60:.0f} min).{link}")
    return png
