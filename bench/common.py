"""What every benchmark script shares: run in a work directory (a temp one unless given), print the
table, optionally save the numbers as JSON."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def run_and_report(
    run_benchmark: Callable[[argparse.Namespace, Path], dict[str, Any]], args: argparse.Namespace, prefix: str
) -> int:
    """``run_benchmark(args, workdir)`` returns a dict with a ``table``; print it, write ``args.json``."""
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=prefix)) if temp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_benchmark(args, workdir)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)
    print(result["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown_table(title: str, columns: Sequence[str], rows: Iterable[Iterable[str]]) -> str:
    """``title``, a blank line, then a Markdown table of string cells."""
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
