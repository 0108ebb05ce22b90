"""A bad record never kills a run (issue 10, section 4, training-time side).

A small database is converted and then four of its records are rewritten with py-lmdb: a JPEG whose
frame header claims 65535x65535 pixels (checksum valid), a record with one payload byte flipped (its
checksum fails), garbage bytes that look like a JPEG but do not decode (checksum valid), and a second
checksum failure right after the garbage one, so a replacement has to skip two records in a row. Both
loaders must deliver ``len(loader)`` batches with those samples replaced by the next good sample of the
rank's plan, the same way every run, and report them; train.py must finish and list them in
``OUTPUT_DIR/bad-records.tsv``, or stop with a checkpoint when there are more than ``--max-bad-records``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_one_line_error, convert, needs_dali, read_spec, repo_pythonpath, run_main
from datagen import huge_png
from PIL import Image

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan

KINDS = [pytest.param("dali", marks=needs_dali), "torch"]
HUGE, FLIPPED, GARBAGE, FLIPPED_AFTER_GARBAGE = 3, 7, 20, 21
BAD = {HUGE: "too large", FLIPPED: "checksum", GARBAGE: "decode", FLIPPED_AFTER_GARBAGE: "checksum"}
PER_CLASS = 16
BATCH = 4


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF) claims ``width`` x ``height``; the rest of the file is unchanged."""
    out = bytearray(data)
    i = 2
    while out[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(out[i + 2 : i + 4], "big")
    out[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


@pytest.fixture(scope="module")
def bad_records_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 small JPEGs in two classes, converted; then records 3, 7, 20 and 21 are rewritten (see above)."""
    import lmdb

    from lmdb_io import ImageFormat
    from lmdb_io.env import close_shared_env
    from lmdb_io.record import HEADER_SIZE, encode_record

    root = tmp_path_factory.mktemp("bad-records")
    for c, name in enumerate(("ants", "bees")):
        (root / "tree" / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            (root / "tree" / name / f"{i:02d}.jpg").write_bytes(_jpeg(48, 40, c * 100 + i))
    db = root / "train.lmdb"
    convert(root / "tree", db)
    database = open_database(db)
    keys, targets = [database.key(i) for i in range(len(database))], database.targets.tolist()
    close_shared_env(str(db))
    env = lmdb.open(str(db), map_size=0)
    with env.begin(write=True) as txn:
        huge = claiming(_jpeg(8, 8, 0), 65535, 65535)
        txn.put(keys[HUGE], bytes(encode_record(huge, targets[HUGE], ImageFormat.JPEG)))
        garbage = b"\xff\xd8\xff\xe0" + b"not an image at all " * 40
        txn.put(keys[GARBAGE], bytes(encode_record(garbage, targets[GARBAGE], ImageFormat.JPEG)))
        for index in (FLIPPED, FLIPPED_AFTER_GARBAGE):
            value = bytearray(txn.get(keys[index]))
            value[HEADER_SIZE + 100] ^= 0xFF
            txn.put(keys[index], bytes(value))
    env.close()
    return db


def expected_indices(order: list[int], bad: set[int]) -> list[int]:
    """Each position's sample, a bad one replaced by the next good one of the rank's order (wrapping)."""
    n = len(order)
    return [next(order[(p + k) % n] for k in range(n) if order[(p + k) % n] not in bad) for p in range(n)]


def make_loader(kind: str, path: Path, batch: int, workers: int, **kw):
    spec, options = read_spec(path, batch, **kw)
    if kind == "torch":
        from lmdb_dali_train.loaders.torch_loader import make_torch_loader

        return make_torch_loader(spec, workers=workers, **options)
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    return make_dali_loader(spec, py_workers=workers, **options)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _epoch(loader) -> tuple[int, list[int], list[int], list[bool]]:
    batches, indices, labels, padding = 0, [], [], []
    for batch in loader:
        assert bool(torch.isfinite(batch.images).all())
        batches += 1
        indices += batch.indices.tolist()
        labels += batch.labels.tolist()
        padding += batch.padding.tolist()
    return batches, indices, labels, padding


# -- the header's pixel count ------------------------------------------------------------------------


def test_image_size_is_read_from_the_header() -> None:
    from lmdb_io.imagecheck import PIXEL_CAP, image_size, too_large as oversize

    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        out = io.BytesIO()
        Image.new("RGB", (37, 21)).save(out, format=fmt)
        assert image_size(out.getvalue()) == (37, 21), fmt
        assert oversize(out.getvalue()) is None
    assert image_size(claiming(_jpeg(8, 8, 0), 65535, 65535)) == (65535, 65535)
    assert "65535x65535" in (oversize(claiming(_jpeg(8, 8, 0), 65535, 65535)) or "")
    photo = io.BytesIO()
    Image.new("RGB", (37, 21)).save(photo, format="JPEG")
    assert oversize(np.frombuffer(photo.getvalue(), np.uint8)) is None  # a MemorySource hands numpy arrays
    assert oversize(np.frombuffer(claiming(photo.getvalue(), 65535, 65535), np.uint8)) is not None
    assert image_size(huge_png()) == (20000, 20000) and 20000 * 20000 > PIXEL_CAP
    assert oversize(huge_png()) is not None
    assert oversize(claiming(_jpeg(8, 8, 0), 65501, 2)) is not None  # a JPEG side beyond decoders' 65500
    assert image_size(b"\xff\xd8\xff\xe0garbage") is None and oversize(b"garbage") is None


# -- the loaders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker processes
@pytest.mark.parametrize("kind", KINDS)
def test_loader_replaces_bad_records_and_reports_them(bad_records_db: Path, kind: str, workers: int) -> None:
    """Two epochs of training: every batch comes, each bad sample replaced by the next good one of the
    rank's plan (the same in a second run), and the loader names each bad record once, with its reason."""
    db = open_database(bad_records_db)
    runs = []
    for _ in range(2):
        loader = make_loader(kind, bad_records_db, BATCH, workers, train=True, seed=1, crop=32)
        epochs = []
        for epoch in range(2):
            announced = len(loader)
            batches, indices, labels, _ = _epoch(loader)
            order = RankPlan(len(db), BATCH, seed=1).for_epoch(epoch).indices.tolist()
            assert batches == announced == len(order) // BATCH
            assert indices == expected_indices(order, set(BAD))
            assert labels == [int(db.targets[i]) for i in indices]
            epochs.append(indices)
        runs.append(epochs)
        reported = loader.bad_records
        assert sorted(reported) == sorted(BAD)
        for index, what in BAD.items():
            record = reported[index]
            assert record.key == db.key(index).decode() and record.path == db.paths()[index]
            assert what in record.reason, record
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", KINDS)
def test_validation_counts_each_good_sample_once(bad_records_db: Path, kind: str) -> None:
    """In order (validation), a replacement is a repeat: marked as padding, so evaluation counts every
    good sample once and no bad one."""
    db = open_database(bad_records_db)
    loader = make_loader(kind, bad_records_db, 8, 0, train=False, crop=32, val_resize=36)
    batches, indices, _, padding = _epoch(loader)
    assert batches == len(db) // 8
    assert indices == expected_indices(list(range(len(db))), set(BAD))
    counted = [i for i, pad in zip(indices, padding, strict=True) if not pad]
    assert counted == [i for i in range(len(db)) if i not in BAD]


# -- train.py ----------------------------------------------------------------------------------------

SMALL = ["-a", "resnet18", "--crop-size", "32", "--val-resize", "36", "--device", "cpu", "--print-freq", "2"]
EXIT_BAD_RECORDS = ExitCode.BAD_RECORDS  # train.py --help: more bad records than --max-bad-records


def _train(db: Path, out: Path, loader: str, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess[str]:
    """One epoch of ``db`` in batches of 4 (torch: two DataLoader workers, so reports cross processes), in
    one process or, ``nproc`` > 1, under torchrun."""
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    cmd = [sys.executable, *run, "train.py", "--loader", loader, "--lmdb", "--train", str(db), "--epochs", "1"]
    cmd += ["-b", str(BATCH), "--output-dir", str(out), "-j", "2" if loader == "torch" else "0", *SMALL, *extra]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)


def _tsv(out: Path) -> list[dict[str, str]]:
    header, *rows = (out / "bad-records.tsv").read_text(encoding="utf-8").splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"), strict=True)) for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("loader", KINDS)
def test_train_goes_on_and_lists_bad_records(bad_records_db: Path, tmp_path: Path, loader: str) -> None:
    db = open_database(bad_records_db)
    proc = _train(bad_records_db, tmp_path, loader)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "all epochs done" in proc.stdout and "Traceback" not in proc.stderr
    rows = _tsv(tmp_path)
    assert sorted(row["key"] for row in rows) == sorted(db.key(i).decode() for i in BAD)
    for index, what in BAD.items():
        row = next(r for r in rows if r["key"] == db.key(index).decode())
        assert row["path"] == db.paths()[index] and what in row["reason"], row
        named = [line for line in proc.stdout.splitlines() if row["key"] in line and row["path"] in line]
        assert len(named) == 1, proc.stdout  # the log names it once, by key and source path
    steps = RankPlan(len(db), BATCH).num_batches(0)
    assert f"step {steps}/{steps}" in proc.stdout  # every step ran


@pytest.mark.slow
def test_two_ranks_share_their_bad_records(bad_records_db: Path, tmp_path: Path) -> None:
    """Under torchrun each rank meets the bad records of its own share; the ranks agree on them (host-side,
    within the epoch at step 5 of 8 and at its end) and rank 0 lists each once."""
    db = open_database(bad_records_db)
    proc = _train(bad_records_db, tmp_path, "torch", "-b", "2", nproc=2)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "all epochs done" in proc.stdout and "Traceback" not in proc.stderr
    rows = _tsv(tmp_path)
    assert sorted(row["key"] for row in rows) == sorted(db.key(i).decode() for i in BAD), rows
    assert {row["rank"] for row in rows} == {"0", "1"}, rows  # each rank met some (the plan's seed is fixed)


@pytest.mark.slow
@pytest.mark.parametrize("loader", KINDS)
def test_more_bad_records_than_allowed_stops_with_a_checkpoint(
    bad_records_db: Path, tmp_path: Path, loader: str
) -> None:
    from lmdb_dali_train import checkpoint

    proc = _train(bad_records_db, tmp_path, loader, "--max-bad-records", "1")
    assert proc.returncode == EXIT_BAD_RECORDS, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    said = [line for line in proc.stdout.splitlines() if "--max-bad-records 1" in line]
    assert len(said) == 1 and "bad-records.tsv" in said[0], proc.stdout
    assert checkpoint.latest(str(tmp_path)) is not None
    assert len(_tsv(tmp_path)) >= 2


@pytest.mark.slow
def test_a_run_stopped_for_bad_records_resumes_only_with_a_larger_limit(bad_records_db: Path, tmp_path: Path) -> None:
    """The checkpoint carries the records met, so they count again on resume: ``--resume auto`` alone is
    refused in one line naming the limit (it would stop at once; the end line names a larger one); with a
    limit above the database's bad records the run finishes and lists no record twice."""
    from lmdb_dali_train.entry import train_main

    flags = ["--loader", "torch", "--lmdb", "--train", str(bad_records_db), "--epochs", "2", "-b", "4", "-j", "0"]
    flags += [*SMALL, "--output-dir", str(tmp_path)]
    stopped = run_main(train_main, *flags, "--max-bad-records", "1")
    assert stopped.returncode == EXIT_BAD_RECORDS, stopped.stdout + stopped.stderr
    (end,) = [line for line in stopped.stdout.splitlines() if "continue it with" in line]
    larger = end.rsplit("--max-bad-records ", 1)[1]
    listed = len(_tsv(tmp_path))
    assert int(larger) > listed >= 2
    refused = run_main(train_main, *flags, "--max-bad-records", "1", "--resume", "auto")
    assert_one_line_error(refused, f"{listed} bad records", "--max-bad-records 1")
    resumed = run_main(train_main, *flags, "--max-bad-records", str(len(BAD)), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = _tsv(tmp_path)
    assert len({(row["key"], row["split"]) for row in rows}) == len(rows) == len(BAD), rows


def test_max_bad_records_flag() -> None:
    from lmdb_dali_train.main import main as train_main

    help_text = " ".join(run_main(train_main, "--help").stdout.split())
    assert "--max-bad-records" in help_text and f"exit code {EXIT_BAD_RECORDS}" in help_text
    assert "bad-records.tsv" in help_text
    result = run_main(train_main, "--synthetic", "--device", "cpu", "--max-bad-records", "-1")
    assert_one_line_error(result, "--max-bad-records")


# -- a record only the GPU decoder rejects (issue 19) ----------------------------------------------------


class _FailsOnce:
    """A pipeline iterator whose ``fail_at``-th batch raises as DALI does when a decoder rejects a record."""

    def __init__(self, inner: Iterator, fail_at: int) -> None:
        self.inner, self.calls, self.fail_at = inner, 0, fail_at

    def __iter__(self) -> _FailsOnce:
        return self

    def __next__(self) -> object:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("Critical error in pipeline: nvJPEG error (stand-in)")
        return next(self.inner)


@needs_dali
def test_a_record_only_the_gpu_decoder_rejects_is_found_and_replaced(
    train_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader "on GPU 0" (DALI's CPU operators stand in; its options say device 0) fails on a record the
    CPU decoder accepts: the check runs with the pipeline's device, so the culprit is found and replaced and
    the epoch is complete (before, the check used the CPU decoder only, found nothing and ended the run),
    on the CPU fallback, with no second pipeline built, and the loader asks for a fresh process."""
    import dataclasses

    from dali_pipeline import decode_check
    from lmdb_dali_train.loaders import dali_loader

    db = open_database(train_db)
    order = RankPlan(len(db), BATCH, seed=1).for_epoch(0).indices.tolist()
    culprit = order[BATCH + 1]  # in the second batch, the one that fails
    asked: list[int | None] = []

    def gpu_rejects_the_culprit(database: object, indices: list[int], **kw: object) -> list[tuple[int, str]]:
        asked.append(kw.get("device_id"))  # type: ignore[arg-type]
        gpu_only = culprit in indices and kw.get("device_id") == 0
        return [(culprit, f"record {db.key(culprit).decode()}: does not decode with GPU 0's nvJPEG")] * gpu_only

    real_build = dali_loader.build_pipeline
    monkeypatch.setattr(
        dali_loader, "build_pipeline", lambda s, opts, p: real_build(s, dataclasses.replace(opts, device_id=None), p)
    )
    monkeypatch.setattr(decode_check, "undecodable_records", gpu_rejects_the_culprit)
    spec, options = read_spec(train_db, BATCH, train=True, seed=1, crop=32)
    loader = dali_loader.make_dali_loader(spec, **options, py_workers=0)
    assert isinstance(loader, dali_loader.DALILoader)
    loader.opts = dataclasses.replace(loader.opts, device_id=0)  # as on GPU 0
    loader._iterator = _FailsOnce(loader._iterator, fail_at=2)
    builds: list[object] = []
    monkeypatch.setattr(dali_loader, "build_pipeline", lambda *a: builds.append(a))
    try:
        indices = [i for batch in loader for i in batch.indices.tolist()]
    finally:
        loader.close()
    assert loader.needs_fresh_process and builds == []
    assert asked and set(asked) == {0}, asked
    assert indices == expected_indices(order, {culprit}) and culprit not in indices
    assert "GPU 0's nvJPEG" in loader.bad_records[culprit].reason
