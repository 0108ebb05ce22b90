"""A conversion stopped hard after its k-th commit, then finished with --resume, equals a straight run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import all_entries, convert, run_cli

from lmdb_io import IncompleteDatabaseError, open_database
from lmdb_io.converter import EXIT_AFTER_COMMITS_ENV
from lmdb_io.schema import PROGRESS_KEY


def _stored_records(entries: dict[bytes, bytes]) -> int:
    return sum(1 for key in entries if key.isdigit())


@pytest.mark.parametrize("workers", ["1", "3"])
def test_resume_after_hard_stop_equals_straight_run(
    hymenoptera: Path, train_db: Path, tmp_path: Path, workers: str
) -> None:
    out = tmp_path / "partial.lmdb"
    stopped = convert(
        hymenoptera / "train",
        out,
        "--commit-every",
        "40",
        "--workers",
        workers,
        env={EXIT_AFTER_COMMITS_ENV: "2"},
        check=False,
    )
    assert stopped.returncode == 86  # the hook's os._exit: no cleanup ran, as with kill -9

    partial = all_entries(out)
    committed = _stored_records(partial)
    assert 0 < committed < 245
    assert PROGRESS_KEY in partial and b"__meta__" not in partial
    with pytest.raises(IncompleteDatabaseError, match="--resume"):
        open_database(out)
    info = run_cli("-m", "lmdb_io", "info", str(out))
    assert info.returncode != 0 and "incomplete" in info.stderr and len(info.stderr.strip().splitlines()) == 1

    refused = convert(hymenoptera / "train", out, check=False)
    assert refused.returncode != 0 and "--resume" in refused.stderr

    report_path = tmp_path / "report.json"
    convert(hymenoptera / "train", out, "--resume", "--report", str(report_path), "--workers", workers)
    report = json.loads(report_path.read_text())
    assert report["reused"] == committed
    assert report["scanned"] == 245 == report["stored_original"] + report["stored_transcoded"] + len(report["skipped"])
    assert all_entries(out) == all_entries(train_db)


def test_resume_refuses_a_changed_dataset(hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial.lmdb"
    convert(hymenoptera / "train", out, "--commit-every", "50", env={EXIT_AFTER_COMMITS_ENV: "1"}, check=False)
    proc = convert(hymenoptera / "val", out, "--resume", check=False)
    assert proc.returncode != 0 and "differ" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_of_a_complete_database_does_nothing(hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "db"
    convert(hymenoptera / "val", out)
    before = all_entries(out)
    proc = convert(hymenoptera / "val", out, "--resume")
    assert "reused 153" in proc.stdout
    assert all_entries(out) == before


@pytest.mark.parametrize("failure", ["ctrl-c", "disk-full"])
def test_interrupt_or_full_disk_then_resume(
    hymenoptera: Path, train_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The third commit fails (Ctrl-C arrives, or the disk is full): two are kept and --resume finishes."""
    import lmdb

    from lmdb_io import ConvertError, converter

    real_put_all = converter._Writer.put_all
    calls = {"n": 0}

    def failing_put_all(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise (
                KeyboardInterrupt if failure == "ctrl-c" else lmdb.DiskError("mdb_txn_commit: No space left on device")
            )
        return real_put_all(self, *args, **kwargs)

    out = tmp_path / "db"
    opts = converter.ConvertOptions(
        dataset=str(hymenoptera / "train"), output=str(out), commit_every=30, progress=False
    )
    monkeypatch.setattr(converter._Writer, "put_all", failing_put_all)
    expected = converter.ConvertInterrupted if failure == "ctrl-c" else ConvertError
    with pytest.raises(expected, match="--resume"):
        converter.convert(opts)
    monkeypatch.setattr(converter._Writer, "put_all", real_put_all)
    assert _stored_records(all_entries(out)) == 60
    opts.resume = True
    report = converter.convert(opts)
    assert report.reused == 60 and report.stored == 245
    assert all_entries(out) == all_entries(train_db)
