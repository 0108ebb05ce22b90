"""Human lines on stdout and JSON lines in OUTPUT_DIR/log.jsonl, from rank 0 only.

Each human line starts with the local time it was written (``stamp``). Hooks (``RunLog.hooks``) see every
record before it is written: they may add fields to it and text to its line (the ETA of ``watch``)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .progname import prog_name

# a record's hook: (kind, fields) -> text appended to its human line ("" for none); it may add fields
Hook = Callable[[str, dict[str, Any]], str]


def stamp(when: float | None = None) -> str:
    """The local time of a console line: ``2025-01-31 14:05:09``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


class RunLog:
    def __init__(self, output_dir: str, enabled: bool) -> None:
        self.enabled = enabled
        self.hooks: list[Hook] = []
        self._file: TextIO | None = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            self._file = open(os.path.join(output_dir, "log.jsonl"), "a", encoding="utf-8", buffering=1)

    def info(self, message: str) -> None:
        if self.enabled:
            print(f"{stamp()} {message}", flush=True)

    def record(self, kind: str, human: str, **fields: Any) -> None:
        """One event: printed as ``human``, appended to log.jsonl with its fields."""
        if not self.enabled:
            return
        now = time.time()
        for hook in self.hooks:
            human += hook(kind, fields)
        print(f"{stamp(now)} {human}", flush=True)
        assert self._file is not None  # opened in __init__ when enabled; only close() drops it
        self._file.write(json.dumps({"event": kind, "time": round(now, 3), **fields}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def warn(message: str) -> None:
    print(f"{prog_name('train.py')}: warning: {message}", file=sys.stderr, flush=True)
