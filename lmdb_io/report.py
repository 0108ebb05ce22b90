"""The conversion's report: what was stored, transcoded and skipped, and the ``--report`` JSON file.

Its own module because the report outlives the conversion: ``convert`` fills it, the command line
prints its summary and writes it (checking first that the path can be written, so a bad ``--report``
fails before the database is built, not after).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field

from . import pathtext
from .errors import ConvertError


@dataclass
class ConvertReport:
    """Counts cover the whole database, earlier runs included; ``reused`` is what earlier runs stored."""

    output: str
    scanned: int = 0
    stored_original: int = 0
    stored_reencoded: int = 0  # originals re-encoded under --max-size / --quality (counted, not listed)
    stored_transcoded: int = 0
    skipped: list[dict] = field(default_factory=list)
    transcoded: list[dict] = field(default_factory=list)
    reused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    @property
    def stored(self) -> int:
        return self.stored_original + self.stored_reencoded + self.stored_transcoded

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rate = (self.scanned - self.reused) / self.seconds if self.seconds else 0.0
        mbs = self.bytes_in / 1e6 / self.seconds if self.seconds and not self.reused else 0.0
        line = (
            f"{self.output}: stored {self.stored} images ({self.stored_original} original, "
            f"{self.stored_reencoded} re-encoded, {self.stored_transcoded} transcoded), skipped {len(self.skipped)}"
        )
        if self.reused:
            line += f", reused {self.reused} from the interrupted run"
        line += (
            f"; {self.bytes_in / 1e6:.1f} MB in, {self.bytes_out / 1e6:.1f} MB out; "
            f"{self.seconds:.1f} s ({rate:.0f} img/s"
        )
        return line + (f", {mbs:.0f} MB/s)" if mbs else ")")


def check_report_path(path: str) -> None:
    """Refuse a --report path that cannot be written, before converting (not after the database is done)."""
    if os.path.isdir(path):
        raise ConvertError(f"cannot write --report {path}: it is a directory")
    probe = f"{path}.tmp"
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise ConvertError(f"cannot write --report {path}: {exc.strerror}") from None


def write_report(report: ConvertReport, path: str) -> None:
    """Atomically write the JSON report (temp file + rename); paths as ``pathtext`` writes them."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(pathtext.json_dumps(report.to_json(), indent=2))
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise ConvertError(f"cannot write --report {path}: {exc.strerror} (the database is complete)") from None
