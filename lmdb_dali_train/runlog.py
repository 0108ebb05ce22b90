"""Human lines on stdout and JSON lines in OUTPUT_DIR/log.jsonl, from rank 0 only."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from .progname import prog_name


class RunLog:
    def __init__(self, output_dir: str, enabled: bool) -> None:
        self.enabled = enabled
        self._file: TextIO | None = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            self._file = open(os.path.join(output_dir, "log.jsonl"), "a", encoding="utf-8", buffering=1)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def record(self, kind: str, human: str, **fields: Any) -> None:
        """One event: printed as ``human``, appended to log.jsonl with its fields."""
        if not self.enabled:
            return
        print(human, flush=True)
        assert self._file is not None  # opened in __init__ when enabled; only close() drops it
        self._file.write(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def warn(message: str) -> None:
    print(f"{prog_name('train.py')}: warning: {message}", file=sys.stderr, flush=True)
