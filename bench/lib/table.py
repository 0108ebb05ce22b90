"""One row/table type for every benchmark: Markdown for the terminal and RESULTS.md, JSON for the files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

HEADINGS = {"what": "what", "how": "how", "result": "result", "mb_per_s": "MB/s", "ratio": "ratio"}
HEADINGS |= {"first_batch": "first batch s (cold / warm)", "data_wait": "data-wait", "target": "target", "met": "met"}


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass
class Row:
    """One line of a table; ``rate`` is the result as a number (images/s, reads/s) for charts and JSON."""

    what: str
    how: str
    result: str = ""
    rate: float | None = None
    mb_per_s: str = ""
    ratio: str = ""
    first_batch: str = ""  # seconds from building a loader to its first batch
    data_wait: str = ""
    target: str = ""
    met: str = ""


@dataclass
class Table:
    """A title, a header paragraph (machine, data, method), rows, and the raw numbers behind them."""

    title: str
    header: str = ""
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    headings: dict[str, str] = field(default_factory=dict)  # column headings other than HEADINGS'

    def markdown(self) -> str:
        """Markdown; a column every row leaves empty is left out."""
        cols = [k for k in HEADINGS if k in ("what", "how", "result") or any(getattr(r, k) for r in self.rows)]
        lines = [f"### {self.title}", ""] + ([self.header, ""] if self.header else [])
        headings = HEADINGS | self.headings
        lines += ["| " + " | ".join(headings[c] for c in cols) + " |", "|" + "---|" * len(cols)]
        cells = ((str(getattr(r, c)).replace("|", "\\|") for c in cols) for r in self.rows)
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"title": self.title, "header": self.header, "rows": [asdict(r) for r in self.rows], "raw": self.raw}
        doc |= {"headings": self.headings}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")

    @classmethod
    def load(cls, path: Path) -> Table:
        doc = json.loads(path.read_text())
        names = {f.name for f in fields(Row)}
        rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in doc["rows"]]
        return cls(doc["title"], doc["header"], rows, doc["raw"], doc["headings"])

    def report(self, json_path: Path | None) -> int:
        """Print the table; save it as JSON where asked. The exit status of a benchmark."""
        print("\n" + self.markdown(), flush=True)
        if json_path is not None:
            self.save(json_path)
        return 0
