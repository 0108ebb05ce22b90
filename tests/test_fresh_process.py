"""After a DALI pipeline fails on a record, the run continues in a fresh process (issue 19, item 4).

DALI 2.4 may crash a pipeline built in a process where one failed (``dali_pipeline.decode_check``), so the
trainer never builds one there: the loader finishes the step from the CPU fallback, the ranks agree to
save (the checkpoint lists the record, which the next process replaces from the start) and the run goes on
in a fresh process: one process re-executes itself, several exit 75 for torchrun ``--max-restarts`` (or
the SLURM example's loop, ``test_slurm.py``). The database holds a truncated JPEG that passes every check
made before decoding and that DALI's CPU decoder rejects (``conftest.undecodable_database``); the GPU tier
runs the same on the mixed decoder (``test_gpu.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import REPO, convert, needs_dali, read_spec, run_main, undecodable_database
from test_loaders import MAX_MEAN_ABS_DIFF, to_pixels
from test_train import _env, _events, _key_logs

from lmdb_dali_train.engine import StopSignal
from lmdb_dali_train.exit_codes import ExitCode
from lmdb_dali_train.flags import parse_args
from lmdb_dali_train.fresh_process import FreshProcessWanted, continuation
from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan

COUNT, BAD = 48, 21
SMALL = ["-a", "resnet18", "--crop-size", "32", "--val-resize", "36", "-b", "4", "--device", "cpu", "-j", "0"]


@pytest.fixture(scope="module")
def undecodable_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return undecodable_database(tmp_path_factory.mktemp("fresh"), count=COUNT, bad=BAD)


@pytest.fixture(scope="module")
def clean_db(undecodable_db: Path) -> Path:
    """The same images converted again: the undecodable record is whole here."""
    convert(undecodable_db.parent / "tree", undecodable_db.parent / "clean.lmdb")
    return undecodable_db.parent / "clean.lmdb"


@pytest.fixture(scope="module")
def other_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other data with the same classes: 24 images, all whole."""
    root = tmp_path_factory.mktemp("other")
    undecodable_database(root, count=24, bad=9)
    convert(root / "tree", root / "clean.lmdb")
    return root / "clean.lmdb"


def _bad_key(db: Path) -> str:
    return open_database(db).key(BAD).decode()


def _tsv_rows(out: Path) -> list[dict[str, str]]:
    header, *rows = (out / "bad-records.tsv").read_text(encoding="utf-8").splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"), strict=True)) for row in rows]


def _assert_each_sample_once_per_epoch(out: Path, db: Path, epochs: int) -> None:
    """The key logs of every rank and process: no (epoch, key) twice, the bad record never, every other
    record in every epoch (the replacement of the bad one is padding, not logged)."""
    trained = Counter((epoch, key) for log in _key_logs(out).values() for epoch, _, key in log)
    assert max(trained.values()) == 1, [k for k, n in trained.items() if n > 1]
    database, bad = open_database(db), _bad_key(db)
    for epoch in range(epochs):
        keys = {key for e, key in trained if e == epoch}
        assert bad not in keys and len(keys) >= len(database) - 4 - 1, (epoch, len(keys))  # train drops < 4


def test_the_continuation_is_the_same_command_resuming_the_run() -> None:
    """The later flags win: ``--resume auto`` and the run's folder, and what is left of ``--max-steps``."""
    command = ["python", "train.py", "--resume", "other.pt", "--output-dir", "elsewhere", "--max-steps", "9"]
    argv = continuation(FreshProcessWanted("runs/r18", 5), command)
    assert argv[:2] == ["python", "train.py"]
    flags = parse_args(argv[2:])
    assert (flags.resume, flags.output_dir, flags.max_steps) == ("auto", "runs/r18", 5)
    assert "--max-steps" not in continuation(FreshProcessWanted("runs/r18", None), ["python", "train.py"])


def test_a_wish_for_a_fresh_process_is_agreed_and_is_not_a_signal() -> None:
    stop = StopSignal()
    try:
        assert not stop.agreed() and not stop.fresh_agreed
        stop.ask_fresh_process()
        assert stop.agreed() and stop.fresh_agreed and stop.agreed_signum == 0
        assert stop.agreed()  # kept once asked
    finally:
        stop.restore()


@needs_dali
def test_a_dali_loader_told_to_fall_back_gives_the_torch_loaders_batches(clean_db: Path) -> None:
    """``fall_back`` (the val loader of a process where another pipeline failed): the pipeline is shut
    down and the next epoch comes from the CPU, which reads as the torch loader does, batch for batch."""
    from lmdb_dali_train.loaders.dali_loader import DALILoader, make_dali_loader
    from lmdb_dali_train.loaders.torch_loader import make_torch_loader

    spec, options = read_spec(clean_db, 5, train=False, crop=32, val_resize=36)
    loader = make_dali_loader(spec, **options)
    assert isinstance(loader, DALILoader)
    assert sum(len(batch.indices) for batch in loader) == 50  # 48 padded to whole batches of 5
    loader.fall_back()
    assert loader.needs_fresh_process and not hasattr(loader, "pipeline")
    reference = make_torch_loader(spec, workers=0)
    for ours, theirs in zip(loader, reference, strict=True):
        assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.padding, theirs.padding)
        assert torch.equal(ours.images, theirs.images) and torch.equal(ours.labels, theirs.labels)
    loader.close()


@needs_dali
def test_a_val_loader_failing_mid_epoch_keeps_the_batch_contract(undecodable_db: Path) -> None:
    """The val pipeline fails mid-epoch: the batches before (DALI's) and after (the fallback's) are the
    torch loader's batch for batch: the same indices, padding (the record replaced, as a repeat), labels
    of the same dtype and device, images within decoder rounding (identical from the fallback)."""
    from lmdb_dali_train.loaders.dali_loader import DALILoader, make_dali_loader
    from lmdb_dali_train.loaders.torch_loader import make_torch_loader

    spec, options = read_spec(undecodable_db, 4, train=False, crop=32, val_resize=36)
    loader = make_dali_loader(spec, **options)
    assert isinstance(loader, DALILoader)
    announced = len(loader)
    pairs = list(zip(loader, make_torch_loader(spec, workers=0), strict=True))
    assert len(pairs) == announced and loader.needs_fresh_process and list(loader.bad_records) == [BAD]
    exact = 0
    for ours, theirs in pairs:
        assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.padding, theirs.padding)
        assert ours.labels.dtype == theirs.labels.dtype and torch.equal(ours.labels, theirs.labels)
        assert ours.images.dtype == theirs.images.dtype and ours.images.shape == theirs.images.shape
        mean_abs = (to_pixels(ours.images) - to_pixels(theirs.images)).abs().mean(dim=(1, 2, 3))
        assert float(mean_abs.max()) <= MAX_MEAN_ABS_DIFF
        exact += torch.equal(ours.images, theirs.images)
    assert 0 < exact < len(pairs)  # DALI's batches before the failure, the fallback's after
    delivered = [i for ours, _ in pairs for i in ours.indices.tolist()]
    padding = [p for ours, _ in pairs for p in ours.padding.tolist()]
    assert BAD not in delivered and sum(padding) == 1 == len(delivered) - COUNT + 1  # 48 = 12 whole batches
    loader.close()


@needs_dali
def test_a_dali_loader_runs_its_pipeline_only_for_the_epoch_asked_for(
    clean_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No epoch is read before ``iter()`` asks for it (DALI's auto_reset starts the next one as an epoch
    ends, while validation runs its pipeline): a pipeline that failed there would fail beside another."""
    from dali_pipeline.source import PlanSource
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    epochs_read: list[int] = []
    real_call = PlanSource.__call__

    def recording(self: PlanSource, sample_info: object) -> object:
        epochs_read.append(sample_info.epoch_idx)  # type: ignore[attr-defined]
        return real_call(self, sample_info)

    monkeypatch.setattr(PlanSource, "__call__", recording)
    spec, options = read_spec(clean_db, 4, train=True, crop=32)
    loader = make_dali_loader(spec, **options, py_workers=0)  # the source runs in this process
    try:
        for epoch in range(2):
            assert sum(1 for _ in loader) == COUNT // 4
            assert max(epochs_read) == epoch, Counter(epochs_read)
    finally:
        loader.close()


@needs_dali
def test_a_run_whose_pipeline_failed_saves_and_its_continuation_never_meets_the_record(
    undecodable_db: Path, tmp_path: Path
) -> None:
    """Called from Python (no re-execution), the run returns 75 after saving a checkpoint that lists the
    record; ``--resume auto`` finishes it without meeting the record again (no new event, no new row)."""
    from lmdb_dali_train.entry import train_main

    out = tmp_path / "run"
    flags = ["--loader", "dali", "--lmdb", "--train", str(undecodable_db), "--epochs", "2", *SMALL]
    flags += ["--output-dir", str(out), "--log-keys"]
    first = run_main(train_main, *flags)
    assert first.returncode == ExitCode.RESTART, first.stdout + first.stderr
    ((_, listed),) = [(p, torch.load(p, weights_only=True)["bad_records"]) for p in out.glob("checkpoint-*.pt")]
    assert [(r["split"], r["key"], r["index"]) for r in listed] == [("train", _bad_key(undecodable_db), BAD)]
    assert [e["reason"] for e in _events(out, "end")] == ["fresh_process"]
    assert "saved for a fresh process to continue" in first.stdout, first.stdout
    second = run_main(train_main, *flags, "--resume", "auto")
    assert second.returncode == ExitCode.OK, second.stdout + second.stderr
    assert [e["reason"] for e in _events(out, "end")] == ["fresh_process", "done"]
    assert len(_events(out, "bad_record")) == 1 and len(_tsv_rows(out)) == 1
    _assert_each_sample_once_per_epoch(out, undecodable_db, 2)


@pytest.mark.slow
@needs_dali
def test_a_signal_during_the_save_stops_the_run_instead_of_restarting_it(
    undecodable_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 (SLURM's warning) while the fresh process's checkpoint is written: the run is saved and
    stops with 138 for the scheduler to requeue, instead of restarting into the time limit."""
    import lmdb_dali_train.main as trainer
    from lmdb_dali_train.entry import train_main

    real_save = trainer.save

    def warned_while_saving(*args: object, **kw: object) -> None:
        real_save(*args, **kw)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGUSR1)  # the trainer's handler records it

    monkeypatch.setattr(trainer, "save", warned_while_saving)
    out = tmp_path / "run"
    flags = ["--loader", "dali", "--lmdb", "--train", str(undecodable_db), "--epochs", "2", *SMALL]
    result = run_main(train_main, *flags, "--output-dir", str(out))
    assert result.returncode == ExitCode.WARNED, result.stdout + result.stderr
    assert [e["reason"] for e in _events(out, "end")] == ["stopped"]
    assert len(list(out.glob("checkpoint-*.pt"))) == 1


@pytest.mark.slow
@needs_dali
def test_a_failed_validation_pipeline_completes_and_the_run_continues_after_it(
    undecodable_db: Path, clean_db: Path, tmp_path: Path
) -> None:
    """The val pipeline fails: validation completes from the CPU fallback (every good image counted once),
    then the run saves at the epoch's end and continues in a fresh process, which validates the next epoch
    with the record replaced from the start; ``--evaluate`` of a checkpoint replaces it too, unmet."""
    from lmdb_dali_train.entry import train_main

    out = tmp_path / "run"
    flags = ["--loader", "dali", "--lmdb", "--train", str(clean_db), "--val", str(undecodable_db), *SMALL]
    flags += ["--epochs", "2", "--output-dir", str(out)]
    assert run_main(train_main, *flags).returncode == ExitCode.RESTART
    assert run_main(train_main, *flags, "--resume", "auto").returncode == ExitCode.OK
    assert [(e["epoch"], e["count"]) for e in _events(out, "val")] == [(0, COUNT - 1), (1, COUNT - 1)]
    assert [(row["key"], row["split"]) for row in _tsv_rows(out)] == [(_bad_key(undecodable_db), "val")]
    last = sorted(out.glob("checkpoint-*.pt"))[-1]
    evaluated = run_main(train_main, "--evaluate", "--resume", str(last), "--val", str(undecodable_db), "-j", "0")
    assert evaluated.returncode == ExitCode.OK, evaluated.stderr
    assert _events(out, "val")[-1]["count"] == COUNT - 1 and len(_events(out, "bad_record")) == 1


@pytest.mark.slow
@needs_dali
def test_a_failure_on_an_epochs_last_step_validates_without_dali_then_continues(tmp_path: Path) -> None:
    """The record is the last sample of epoch 0: the agreement comes at the epoch's end, so the process
    first validates that epoch, its val loader falling back to the CPU (no DALI pipeline runs again where
    one failed), then saves and continues; every epoch is validated, every image counted."""
    from lmdb_dali_train.entry import train_main

    last = int(RankPlan(COUNT, 4, seed=0).for_epoch(0).indices[-1])
    db = undecodable_database(tmp_path / "data", count=COUNT, bad=last)
    convert(db.parent / "tree", tmp_path / "clean.lmdb")
    out = tmp_path / "run"
    flags = ["--loader", "dali", "--lmdb", "--train", str(db), "--val", str(tmp_path / "clean.lmdb"), *SMALL]
    flags += ["--epochs", "2", "--output-dir", str(out)]
    first = run_main(train_main, *flags)
    assert first.returncode == ExitCode.RESTART, first.stdout + first.stderr
    assert "validation of epoch 0 runs without DALI" in first.stdout, first.stdout
    assert [(e["reason"], e["global_step"]) for e in _events(out, "end")] == [("fresh_process", COUNT // 4)]
    assert run_main(train_main, *flags, "--resume", "auto").returncode == ExitCode.OK
    assert [(e["epoch"], e["count"]) for e in _events(out, "val")] == [(0, COUNT), (1, COUNT)]


@pytest.mark.slow
@needs_dali
def test_known_bad_records_of_other_data_are_not_applied(
    undecodable_db: Path, clean_db: Path, other_db: Path, tmp_path: Path
) -> None:
    """A checkpoint's records belong to the data they were met in: its val record (index 21) is not
    replaced when the checkpoint is evaluated on another val set (every one of its images counted)."""
    from lmdb_dali_train.entry import train_main

    out = tmp_path / "run"
    flags = ["--loader", "dali", "--lmdb", "--train", str(clean_db), "--val", str(undecodable_db), *SMALL]
    assert run_main(train_main, *flags, "--epochs", "2", "--output-dir", str(out)).returncode == ExitCode.RESTART
    (saved,) = out.glob("checkpoint-*.pt")
    assert [r["index"] for r in torch.load(saved, weights_only=True)["bad_records"]] == [BAD]
    other = len(open_database(other_db))
    assert other > BAD
    args = ["--evaluate", "--resume", str(saved), "--val", str(other_db), "-j", "0"]
    assert run_main(train_main, *args).returncode == ExitCode.OK
    assert _events(out, "val")[-1]["count"] == other


@pytest.mark.slow
@needs_dali
def test_train_py_replaces_itself_with_its_continuation(undecodable_db: Path, tmp_path: Path) -> None:
    """As users run it: ``python train.py`` (one process) says it continues in a fresh process, replaces
    itself and finishes with exit 0; every sample once per epoch, the record listed once."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--loader", "dali", "--lmdb", "--train", str(undecodable_db), *SMALL]
    cmd += ["--epochs", "2", "--output-dir", str(out), "--log-keys"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if line.startswith("continuing in a fresh process: ")]
    assert len(said) == 1 and said[0].endswith(f"--resume auto --output-dir {out}"), proc.stdout
    assert [e["reason"] for e in _events(out, "end")] == ["fresh_process", "done"]
    assert len(_events(out, "start")) == 2 and len(_tsv_rows(out)) == 1
    _assert_each_sample_once_per_epoch(out, undecodable_db, 2)


def _torchrun(db: Path, out: Path, *launcher: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *launcher]
    cmd += ["train.py", "--loader", "dali", "--lmdb", "--train", str(db), *SMALL, "--epochs", "2"]
    cmd += ["--output-dir", str(out), "--log-keys", "--resume", "auto"]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_dali
def test_two_ranks_exit_75_and_torchrun_max_restarts_continues(undecodable_db: Path, tmp_path: Path) -> None:
    """Under torchrun every rank saves and exits 75: without ``--max-restarts`` torchrun reports the failure
    and the same command continues the run; with it, torchrun starts the ranks again by itself. Either way
    no sample is trained twice and the record is listed once."""
    alone, restarted = tmp_path / "alone", tmp_path / "restarted"
    failed = _torchrun(undecodable_db, alone)
    assert failed.returncode != 0 and "exitcode: 75" in failed.stderr, failed.stderr[-3000:]
    assert [e["reason"] for e in _events(alone, "end")] == ["fresh_process"]
    again = _torchrun(undecodable_db, alone)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    by_itself = _torchrun(undecodable_db, restarted, "--max-restarts", "1")
    assert by_itself.returncode == 0, by_itself.stdout[-2000:] + by_itself.stderr[-3000:]
    for out in (alone, restarted):
        assert [e["reason"] for e in _events(out, "end")] == ["fresh_process", "done"]
        assert [row["key"] for row in _tsv_rows(out)] == [_bad_key(undecodable_db)]
        _assert_each_sample_once_per_epoch(out, undecodable_db, 2)
