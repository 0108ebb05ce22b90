"""The bench library: machine, data, timing, this project's loaders, train.py's log, tables, RESULTS.md and
the gpu check's rows. Suites import only this; it fails with ``BenchError``, which ``entry`` reports."""

import functools
import sys
from collections.abc import Callable, Sequence


class BenchError(Exception):
    """A benchmark cannot go on; the message says why in a line."""


def entry(main: Callable[..., int]) -> Callable[..., int]:
    """A suite's ``main``, with a ``BenchError`` turned into ``error: ...`` on stderr and exit status 2."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except BenchError as e:
            print("error: " + " ".join(str(e).split()), file=sys.stderr, flush=True)
            return 2

    return run


def last_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
