"""The rows of ``python -m bench.gpu_check``: its suites (``tier``, ``loader``, ``train``) plan ``Check`` s,
``run_check`` measures one or says why not; ``probe``, ``child`` and ``report`` serve them."""

import argparse
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import BenchError, last_line
from ..table import Row

MIN_SECONDS = {"tests": 30.0, "loader": 15.0, "train": 25.0, "derived": 0.0}  # budget to start a GPU row


class RowFailed(Exception):
    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


class RowTimedOut(Exception):
    """A row ran past its budget and was killed."""


def describe(exc: BaseException) -> str:
    """One line for an exception; bench's own errors end with the failed command's last stderr line."""
    if isinstance(exc, BenchError | SystemExit):
        return last_line(str(exc)) or f"{type(exc).__name__} {exc}"
    return last_line(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")


@dataclass
class Check:
    """A planned row: what it needs, the least budget it needs, and ``measure(seconds left)``."""

    kind: str  # tests | loader | train | derived
    key: str
    row: Row
    needs: tuple[str, ...]
    least: float
    measure: Callable[[float], dict[str, Any]]
    status: str = "ok"
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


def check(args: argparse.Namespace, kind: str, key: str, what: str, how: str, needs: tuple, measure: Callable) -> Check:
    """A ``Check`` with the least budget of its kind (1 s in a ``--cpu`` dry run)."""
    least = min(MIN_SECONDS[kind], 1.0) if args.cpu else MIN_SECONDS[kind]
    return Check(kind, key, Row(what, how), needs, least, measure)


def run_check(check: Check, missing: dict[str, str], deadline: float, budget: float) -> None:
    """Measure one row, or say why it was not run or how it failed; never raises."""
    if check.kind == "derived":  # filled in by report.set_ratios
        return
    left = deadline - time.monotonic()
    reason = next((missing[n] for n in check.needs if n in missing), None)
    if reason is None and left < check.least:
        reason = f"time budget: {left:.0f} s of --budget left, this row needs about {check.least:.0f}"
    if reason:
        check.status, check.row.result = "not run", f"not run: {reason}"
        return
    started, given = time.monotonic(), min(left - 5, budget / 2)  # no row may take more than half the budget
    try:
        found = check.measure(given)
        check.row.rate, wait = found.pop("rate", None), found.pop("data_wait", None)
        check.row.result = found.pop("result", None) or (f"{check.row.rate:,.0f}" if check.row.rate else "")
        check.row.data_wait = f"{100 * wait:.1f} %" if wait is not None else "n/a" * (check.kind != "tests")
        check.row.how += f", steps {found['steps']}" if "steps" in found else ""
        check.detail = found
    except RowTimedOut as e:  # a hung pipeline, say: this row only
        check.status, check.row.result = "not run", f"not run: {e}"
    except (Exception, SystemExit) as e:
        check.status, check.row.result = "failed", f"failed: {e if isinstance(e, RowFailed) else describe(e)}"
        if given < budget / 2 and "timed out" in str(e):  # cut short by the budget's end, not hung: not run
            check.status, check.row.result = "not run", f"not run: budget ({left:.0f} s of --budget left at its start)"
        check.detail = getattr(e, "detail", None) or {"traceback": traceback.format_exc()}
    check.seconds = time.monotonic() - started
