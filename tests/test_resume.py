"""A conversion stopped after its k-th commit, then finished with --resume, equals a straight run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import Result, all_entries, assert_one_line_error, convert, fault_env, lmdb_io_cli, run_cli
from datagen import SKIPPED, GeneratedDataset

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import IncompleteDatabaseError, open_database
from lmdb_io.schema import PROGRESS_KEY


def _stored_records(entries: dict[bytes, bytes]) -> int:
    return sum(1 for key in entries if key.isdigit())


def _stored_among_first(generated: GeneratedDataset, scanned: int) -> int:
    return sum(1 for f in generated.train.files[:scanned] if f.outcome != SKIPPED)


@pytest.mark.parametrize("workers", ["1", "3"])
def test_resume_after_hard_stop_equals_straight_run(
    generated: GeneratedDataset, train_dir: Path, train_db: Path, tmp_path: Path, workers: str
) -> None:
    """A subprocess, because the point is a process that dies without cleanup (``os._exit``, as kill -9)."""
    out = tmp_path / "partial.lmdb"
    every = 20
    args = ["--dataset", str(train_dir), "-o", str(out), "-q", "--commit-every", str(every), "--workers", workers]
    stopped = run_cli("convert.py", *args, env=fault_env(exit_after_commits="2"))
    assert stopped.returncode == 86, stopped.stderr  # the fault's os._exit: no cleanup ran

    partial = all_entries(out)
    committed = _stored_records(partial)
    assert committed == _stored_among_first(generated, 2 * every)
    assert 0 < committed < len(generated.train.stored)
    assert PROGRESS_KEY in partial and b"__meta__" not in partial
    with pytest.raises(IncompleteDatabaseError, match="--resume"):
        open_database(out)
    assert_one_line_error(lmdb_io_cli("info", str(out)), "incomplete", "--resume")

    assert_one_line_error(convert(train_dir, out, check=False), "not empty", "--resume")

    report_path = tmp_path / "report.json"
    convert(train_dir, out, "--resume", "--report", str(report_path), "--workers", workers)
    report = json.loads(report_path.read_text())
    assert report["reused"] == committed
    assert report["scanned"] == len(generated.train.files)
    assert report["scanned"] == report["stored_original"] + report["stored_transcoded"] + len(report["skipped"])
    assert [e["path"] for e in report["skipped"]] == [f.rel for f in generated.train.outcome(SKIPPED)]
    assert all_entries(out) == all_entries(train_db)


def _interrupted_run(
    dataset: Path, out: Path, monkeypatch: pytest.MonkeyPatch, failure: str, at_commit: int, every: int
) -> Result:
    """convert.py in-process whose ``at_commit``-th commit fails (Ctrl-C or SIGTERM arrives, or the disk is
    full)."""
    import lmdb

    from lmdb_io import writer

    real_put_all = writer.Writer.put_all
    calls = {"n": 0}

    def failing_put_all(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_commit:
            if failure == "ctrl-c":
                raise KeyboardInterrupt
            if failure == "sigterm":  # a scheduler's stop: the same as Ctrl-C, but its own exit code
                os.kill(os.getpid(), signal.SIGTERM)
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")
        return real_put_all(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(writer.Writer, "put_all", failing_put_all)
        return convert(dataset, out, "--commit-every", str(every), check=False)


@pytest.mark.parametrize(
    "failure, code", [("ctrl-c", ExitCode.INTERRUPTED), ("sigterm", ExitCode.TERMINATED), ("disk-full", ExitCode.USAGE)]
)
def test_interrupt_or_full_disk_then_resume(
    generated: GeneratedDataset,
    train_dir: Path,
    train_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
    code: int,
) -> None:
    """The third commit fails: two are kept, the message says --resume, and --resume finishes."""
    from lmdb_io import converter

    out, every = tmp_path / "db", 15
    result = _interrupted_run(train_dir, out, monkeypatch, failure, at_commit=3, every=every)
    committed = _stored_among_first(generated, 2 * every)
    assert_one_line_error(result, f"{committed} images are committed", "--resume", code=code)
    if failure == "disk-full":
        assert "No space left on device" in result.stderr
    assert _stored_records(all_entries(out)) == committed
    report = converter.convert(
        converter.ConvertOptions(
            dataset=str(train_dir), output=str(out), commit_every=every, progress=False, resume=True
        )
    )
    assert report.reused == committed and report.stored == len(generated.train.stored)
    assert all_entries(out) == all_entries(train_db)
    straight = converter.convert(converter.ConvertOptions(dataset=str(train_dir), output=str(tmp_path / "straight")))
    assert report.skipped == straight.skipped and report.transcoded == straight.transcoded  # the report survives


def test_progress_stays_small_and_logs_each_file_once(
    train_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One commit per file: ``__progress__`` keeps a constant size (counts only), and every skipped or
    transcoded file is written once, in the commit that handled it, never again (no quadratic rewrite)."""
    from lmdb_io import converter, schema, writer

    progress_sizes: list[int] = []
    logged: list[dict] = []
    real_put_all = writer.Writer.put_all

    def recording_put_all(self, puts, deletes=()):
        for key, value in puts:
            if key == schema.PROGRESS_KEY:
                progress_sizes.append(len(value))
            elif key.startswith(schema.PROGRESS_LOG_PREFIX):
                entries = json.loads(value)
                logged.extend(entries["skipped"] + entries["transcoded"])
        return real_put_all(self, puts, deletes)

    monkeypatch.setattr(writer.Writer, "put_all", recording_put_all)
    report = converter.convert(
        converter.ConvertOptions(dataset=str(train_dir), output=str(tmp_path / "db"), commit_every=1, progress=False)
    )
    assert len(progress_sizes) == report.scanned and len(report.skipped) + len(report.transcoded) >= 5
    assert max(progress_sizes) - min(progress_sizes) < 40  # only the digits of the counts grow
    assert sorted(map(str, logged)) == sorted(map(str, report.skipped + report.transcoded))  # each once
    assert not [k for k in all_entries(tmp_path / "db") if k.startswith(b"__progress")]  # gone when complete


def test_resume_refuses_a_changed_dataset(
    generated: GeneratedDataset, val_dir: Path, train_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "partial.lmdb"
    result = _interrupted_run(train_dir, out, monkeypatch, "ctrl-c", at_commit=2, every=10)
    assert result.returncode == ExitCode.INTERRUPTED
    assert_one_line_error(convert(val_dir, out, "--resume", check=False), "differ", "--overwrite")
    assert_one_line_error(convert(train_dir, out, "--resume", "--keep-format", check=False), "differ")
    assert _stored_records(all_entries(out)) == _stored_among_first(generated, 10)  # untouched


def test_resume_of_a_complete_database_does_nothing(generated: GeneratedDataset, val_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "db"
    convert(val_dir, out)
    before = all_entries(out)
    result = convert(val_dir, out, "--resume")
    assert f"reused {len(generated.val.stored)}" in result.stdout
    assert all_entries(out) == before
