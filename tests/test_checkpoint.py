"""lmdb_dali_train/checkpoint.py: rotation, ``latest`` by step number, atomic save, a round trip under weights_only."""

from __future__ import annotations

import argparse
import errno
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmdb_dali_train import checkpoint
from lmdb_dali_train.errors import ConfigError


def _state(step: int) -> dict:
    return {"global_step": step, "epoch": step // 10, "weights": torch.full((2, 3), float(step))}


def _steps(paths: list[str]) -> list[int]:
    return [checkpoint.load(p)["global_step"] for p in paths]


def test_rotation_keeps_the_newest_by_step(tmp_path: Path) -> None:
    out = str(tmp_path)
    (tmp_path / "checkpoint-stepXYZ.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoint-step000000100.pt.tmp-123").write_bytes(b"a torn write")
    for step in (9, 10, 100):
        checkpoint.save(out, _state(step))
    assert 1 <= checkpoint.KEEP < 3  # so three saves rotate
    kept = checkpoint.all_checkpoints(out)
    assert _steps(kept) == [9, 10, 100][-checkpoint.KEEP :]
    assert checkpoint.latest(out) == kept[-1] and checkpoint.load(kept[-1])["global_step"] == 100
    # the strays are neither counted nor rotated away
    assert (tmp_path / "checkpoint-stepXYZ.pt").exists() and (tmp_path / "checkpoint-step000000100.pt.tmp-123").exists()


def test_rotation_is_by_step_not_by_save_order(tmp_path: Path) -> None:
    out = str(tmp_path)
    for step in (100, 9, 10):
        checkpoint.save(out, _state(step))
    assert _steps(checkpoint.all_checkpoints(out)) == [9, 10, 100][-checkpoint.KEEP :]
    assert checkpoint.load(checkpoint.latest(out))["global_step"] == 100


def test_keep_sets_how_many_are_kept(tmp_path: Path) -> None:
    """--keep-checkpoints N: the newest N by step stay; the default keeps KEEP."""
    out = str(tmp_path)
    for step in (1, 2, 3, 4):
        checkpoint.save(out, _state(step), keep=3)
    assert _steps(checkpoint.all_checkpoints(out)) == [2, 3, 4]
    checkpoint.save(out, _state(5), keep=1)
    assert _steps(checkpoint.all_checkpoints(out)) == [5]


def test_write_file_is_a_plain_torch_file_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """best.pt and weights.pt: exactly what torch.save writes (no digest, no wrapping dict), through a temporary
    file; a full disk leaves the previous file and no temporary one."""
    out = tmp_path / "run"
    weights = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    path = checkpoint.write_file(str(out), "weights.pt", weights)
    assert path == str(out / "weights.pt") and os.listdir(out) == ["weights.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    _disk_fills(monkeypatch)
    with pytest.raises(ConfigError, match="no space left"):
        checkpoint.write_file(str(out), "weights.pt", {"fc.weight": torch.full((2, 3), 2.0)})
    monkeypatch.undo()
    assert os.listdir(out) == ["weights.pt"] and torch.equal(
        torch.load(path, weights_only=True)["fc.weight"], 1 + 0 * weights["fc.weight"]
    )


def test_numeric_not_lexical_order(tmp_path: Path) -> None:
    """Names without zero padding (older runs, hand copies, steps past 9 digits) still sort by number."""
    for step in (9, 10, 100):
        saved = checkpoint.save(str(tmp_path / "scratch"), _state(step))
        os.rename(saved, tmp_path / f"checkpoint-step{step}.pt")
    os.rmdir(tmp_path / "scratch")
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "checkpoint-step9.pt"  # lexical: 9 last
    assert _steps(checkpoint.all_checkpoints(str(tmp_path))) == [9, 10, 100]
    assert checkpoint.latest(str(tmp_path)) == str(tmp_path / "checkpoint-step100.pt")
    checkpoint.save(str(tmp_path), _state(1_000_000_000))  # ten digits: wider than the padding
    assert _steps(checkpoint.all_checkpoints(str(tmp_path))) == [9, 10, 100, 1_000_000_000][-checkpoint.KEEP :]


def test_load_refuses_another_format(tmp_path: Path) -> None:
    """A file from an older trainer, or any other torch file, is a one-line error naming it, not a KeyError."""
    for name, content in (("old.pt", {"format_version": 2, "global_step": 3}), ("other.pt", {"weights": 1})):
        torch.save(content, tmp_path / name)  # no digest: neither was written by this trainer version
        with pytest.raises(ConfigError, match=f"{name}: corrupt checkpoint: no integrity digest"):
            checkpoint.load(str(tmp_path / name))
    older = checkpoint.save(str(tmp_path), {"global_step": 3, "format_version": 1})  # digested, but version 1
    with pytest.raises(ConfigError, match=f"{os.path.basename(older)}: checkpoint format version 1"):
        checkpoint.load(older)


def test_latest_of_nothing(tmp_path: Path) -> None:
    assert checkpoint.latest(str(tmp_path)) is None
    assert checkpoint.latest(str(tmp_path / "missing")) is None
    (tmp_path / "checkpoint-stepXYZ.pt").write_bytes(b"")
    assert checkpoint.all_checkpoints(str(tmp_path)) == []


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"  # created by save
    first = checkpoint.save(str(out), _state(5))
    assert os.listdir(out) == [os.path.basename(first)]  # no temp file left
    real_save = torch.save

    def torn_save(obj: object, f: io.BytesIO) -> None:  # the serialisation fails half way through
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        checkpoint.save(str(out), _state(6))
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.latest(str(out)) == first  # the torn write never took the checkpoint's name
    assert checkpoint.load(first)["global_step"] == 5


def test_round_trip_under_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "global_step": 7,
        "epoch": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "args": {"arch": "resnet18", "lr": 0.1, "resume": None, "amp": "off"},
        "rng": checkpoint.rng_state(),
        "dataset": {"classes": ["ants", "bees"], "images": 245},
    }
    path = checkpoint.save(str(tmp_path), state)
    loaded = checkpoint.load(path)
    assert loaded["format_version"] == checkpoint.FORMAT_VERSION
    assert loaded["global_step"] == 7 and loaded["args"] == state["args"] and loaded["dataset"] == state["dataset"]
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    clone = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    clone.load_state_dict(loaded["optimizer"])  # loads into a fresh optimiser
    assert torch.equal(
        clone.state_dict()["state"][0]["momentum_buffer"], optimizer.state[model.weight]["momentum_buffer"]
    )


def test_load_refuses_arbitrary_objects(tmp_path: Path) -> None:
    """load() uses weights_only: a pickled object that is not plain data is refused, never executed."""
    path = checkpoint.save(str(tmp_path), {"global_step": 1, "args": argparse.Namespace(lr=0.1)})  # digest holds
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(path)


def test_rng_state_round_trips(tmp_path: Path) -> None:
    torch_before, numpy_before = torch.get_rng_state(), np.random.get_state()
    try:
        torch.manual_seed(3)
        np.random.seed(3)
        path = checkpoint.save(str(tmp_path), {"global_step": 1, "rng": checkpoint.rng_state()})
        expected = (torch.rand(4), np.random.rand(4))
        torch.manual_seed(99)
        np.random.seed(99)
        checkpoint.restore_rng(checkpoint.load(path)["rng"])
        assert torch.equal(torch.rand(4), expected[0]) and np.array_equal(np.random.rand(4), expected[1])
    finally:
        torch.set_rng_state(torch_before)
        np.random.set_state(numpy_before)


# -- integrity: a digest written with each checkpoint, verified on load (issue 10) ---------------------


def _scribble(path: str, count: int = 1000) -> None:
    """``count`` random bytes written into the middle of the file, as a bad disk or a stray write would."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes())
    assert os.path.getsize(path) == max(size, size // 3 + count)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_scribble, _truncate])
def test_damaged_checkpoint_is_refused_in_one_line(tmp_path: Path, damage) -> None:
    path = checkpoint.save(str(tmp_path), {**_state(3), "big": torch.arange(100_000, dtype=torch.float32)})
    damage(path)
    with pytest.raises(ConfigError) as caught:
        checkpoint.load(path)
    message = str(caught.value)
    assert "\n" not in message and path in message and "corrupt" in message, message


def test_a_raw_torch_file_has_no_digest(tmp_path: Path) -> None:
    """A file written by another program (or truncated before its digest) is not taken on trust."""
    torch.save({"format_version": checkpoint.FORMAT_VERSION, **_state(3)}, tmp_path / "checkpoint-step3.pt")
    with pytest.raises(ConfigError, match="checkpoint-step3.pt: .*no integrity digest"):
        checkpoint.load(str(tmp_path / "checkpoint-step3.pt"))


def test_resume_auto_falls_back_to_the_newest_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmdb_dali_train.resume import resume_path

    out = str(tmp_path)
    first = checkpoint.save(out, _state(10))
    second = checkpoint.save(out, _state(20))
    _scribble(second)
    assert resume_path("auto", out) == first
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0], lines
    assert os.path.basename(second) in lines[0] and os.path.basename(first) in lines[0], lines[0]
    _truncate(first)
    with pytest.raises(ConfigError, match="no intact checkpoint"):
        resume_path("auto", out)


def test_named_corrupt_checkpoint_is_a_one_line_refusal(tmp_path: Path) -> None:
    from conftest import assert_one_line_error, run_main

    from lmdb_dali_train.main import main as train_main

    path = checkpoint.save(str(tmp_path), _state(10))
    _scribble(path)
    args = ["--synthetic", "--device", "cpu", "-a", "resnet18", "-b", "2", "--output-dir", str(tmp_path / "o")]
    result = run_main(train_main, *args, "--resume", path, "--max-steps", "1")
    assert_one_line_error(result, path, "corrupt")


def _corrupting_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write to a checkpoint's temporary file lands with one byte flipped (a silent disk fault)."""
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if ".pt.tmp-" in os.readlink(f"/proc/self/fd/{fd}") and len(data) > 100:
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
        return real_write(fd, bytes(data))

    monkeypatch.setattr(os, "write", write)


def test_a_save_that_does_not_verify_rotates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path)
    kept = [checkpoint.save(out, _state(step)) for step in (1, 2)]
    _corrupting_writes(monkeypatch)
    with pytest.raises(ConfigError, match="corrupt"):
        checkpoint.save(out, _state(3))
    monkeypatch.undo()
    assert checkpoint.all_checkpoints(out) == kept  # the last intact ones stay; the bad one is gone
    assert [checkpoint.load(p)["global_step"] for p in kept] == [1, 2]
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in kept)


# -- disk full, stale temporary files, durability (issue 10) -------------------------------------------


def _disk_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes to a checkpoint's temporary file: the first half of the first write lands, then ENOSPC."""
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if ".pt.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            if os.fstat(fd).st_size == 0:
                return real_write(fd, bytes(data)[: max(1, len(data) // 2)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_disk_full_is_one_line_naming_the_directory_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    first = checkpoint.save(str(out), _state(5))
    size = os.path.getsize(first)
    _disk_fills(monkeypatch)
    for _ in range(2):  # and again: a failed save leaves nothing behind that makes the next one fail
        with pytest.raises(ConfigError) as caught:
            checkpoint.save(str(out), _state(6))
        message = str(caught.value)
        assert "\n" not in message and str(out) in message and "no space left" in message.lower(), message
        assert f"{size:,} bytes" in message, message  # the checkpoint's size: what the disk must hold
        assert os.listdir(out) == [os.path.basename(first)], "the temporary file was left behind"
    monkeypatch.undo()  # space freed: the next save works
    second = checkpoint.save(str(out), _state(6))
    assert checkpoint.load(second)["global_step"] == 6 and checkpoint.load(first)["global_step"] == 5


def test_stale_temporary_files_are_cleaned_at_the_start_of_a_run(tmp_path: Path) -> None:
    from conftest import run_main

    from lmdb_dali_train.main import main as train_main

    out = tmp_path / "run"
    out.mkdir()
    stale = [out / "checkpoint-step000000100.pt.tmp-123", out / "checkpoint-step7.pt.tmp-99999"]
    for path in stale:
        path.write_bytes(b"a torn write" * 1000)
    (out / "notes.tmp-1").write_text("not ours")
    args = ["--synthetic", "--device", "cpu", "-a", "resnet18", "-b", "2", "--crop-size", "32", "--max-steps", "1"]
    result = run_main(train_main, *args, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in stale) and (out / "notes.tmp-1").exists()
    assert [checkpoint.load(p)["global_step"] for p in checkpoint.all_checkpoints(str(out))] == [1]


def test_stale_temporary_files_of_best_and_weights_are_cleaned_too(tmp_path: Path) -> None:
    stale = [tmp_path / "best.pt.tmp-12", tmp_path / "weights.pt.tmp-345", tmp_path / "checkpoint-step5.pt.tmp-6"]
    kept = [tmp_path / "best.pt", tmp_path / "other.pt.tmp-7", tmp_path / "weights.pt.tmp-x"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(checkpoint.clean_stale_temps(str(tmp_path))) == sorted(map(str, stale))
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_save_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's data is fsynced before the rename, and its directory after it (so the rename is on disk)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = checkpoint.save(str(tmp_path), _state(4))
    monkeypatch.undo()
    where = events.index(("replace", path))
    assert any(kind == "fsync" and ".pt.tmp-" in target for kind, target in events[:where]), events
    assert ("fsync", str(tmp_path)) in events[where + 1 :], events


# -- resume on an accelerator: the checkpoint is loaded to the CPU (issue 10) --------------------------


@pytest.mark.filterwarnings(
    "ignore:.*to a meta parameter in the current model:UserWarning"
)  # the meta model stands in for a GPU
def test_restore_onto_another_device_loads_the_checkpoint_to_the_cpu(tmp_path: Path) -> None:
    """On a GPU, ``map_location=<cuda device>`` made the saved RNG state a CUDA tensor, which
    ``torch.set_rng_state`` refuses (TypeError). The CPU reproduction: a state on the ``meta`` device, a
    non-CPU device every CPU build of torch has; the model and optimizer state still land on the device."""
    from lmdb_dali_train.config import RunConfig
    from lmdb_dali_train.distributed import Placement
    from lmdb_dali_train.flags import parse_args
    from lmdb_dali_train.model import build_state
    from lmdb_dali_train.resume import restore
    from lmdb_dali_train.runlog import RunLog

    args = RunConfig.from_args(
        parse_args(["--synthetic", "-a", "resnet18", "--epochs", "1", "-b", "2", "--output-dir", str(tmp_path)])
    )
    place = Placement(0, 1, 0)
    trained = build_state(args, place, torch.device("cpu"), num_classes=2, steps_per_epoch=10)
    before = torch.get_rng_state()
    try:
        torch.manual_seed(5)
        saved_rng = checkpoint.rng_state()
        path = checkpoint.save(
            str(tmp_path),
            {
                "model": trained.module.state_dict(),
                "optimizer": trained.optimizer.state_dict(),
                "scheduler": trained.scheduler.state_dict(),
                "scaler": {},
                "epoch": 0,
                "step_in_epoch": 3,
                "epoch_position": 6,
                "global_step": 3,
                "samples_seen": 6,
                "world_size": 1,
                "config": args.as_dict(),
                "rng": saved_rng,
                "dataset": None,
            },
        )
        torch.manual_seed(99)
        on_device = build_state(args, place, torch.device("meta"), num_classes=2, steps_per_epoch=10)
        restore(on_device, path, None, False, RunLog(str(tmp_path), enabled=False))
        assert torch.equal(torch.get_rng_state(), saved_rng["torch"])
        assert (on_device.epoch, on_device.global_step, on_device.epoch_position) == (0, 3, 6)
        assert next(on_device.module.parameters()).device.type == "meta"
    finally:
        torch.set_rng_state(before)


# -- the CUDA generator on resume: each rank restores its own device's (issue 19) ----------------------


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, visible: int, current: int) -> dict[int, torch.Tensor]:
    """``visible`` CUDA devices on a CPU-only machine, ``current`` this process's: the generator functions
    record what is set on which device and raise IndexError for a device that is not visible, as torch does
    (``set_rng_state_all`` indexes every saved state)."""
    restored: dict[int, torch.Tensor] = {}

    def set_rng_state(state: torch.Tensor, device: int | str = "cuda") -> None:
        index = current if device == "cuda" else int(device)
        if index >= visible:
            raise IndexError(f"device {index} of {visible}")
        restored[index] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)  # what set_rng_state_all calls
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": torch.full((8,), 40 + current, dtype=torch.uint8)
    )
    return restored


def _saved_with_gpus(tmp_path: Path, gpus: int) -> dict[str, Any]:
    """A checkpoint's RNG states as a process that saw ``gpus`` devices wrote them (``get_rng_state_all``)."""
    rng = {**checkpoint.rng_state(), "cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(gpus)]}
    path = checkpoint.save(str(tmp_path), {"global_step": 1, "rng": rng})
    return checkpoint.load(path)["rng"]


@pytest.mark.parametrize("visible, current", [(1, 0), (4, 3)])
def test_a_checkpoint_saved_with_8_gpus_restores_with_fewer_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, visible: int, current: int
) -> None:
    """Saved with 8 GPUs, resumed with ``CUDA_VISIBLE_DEVICES=0`` (or as rank 3 of 4): the state of this
    process's own device is restored, on that device only; before, ``set_rng_state_all`` raised IndexError."""
    saved = _saved_with_gpus(tmp_path, 8)
    torch_before = torch.get_rng_state()
    restored = _fake_gpus(monkeypatch, visible, current)
    try:
        with pytest.raises(IndexError):  # what the old restore did
            torch.cuda.set_rng_state_all(saved["cuda"])
        restored.clear()
        checkpoint.restore_rng(saved)
    finally:
        torch.set_rng_state(torch_before)
    assert list(restored) == [current] and torch.equal(restored[current], saved["cuda"][current])


def test_the_saving_rank_keeps_its_own_devices_state_which_every_rank_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_gpus(monkeypatch, visible=8, current=0)
    rng = checkpoint.rng_state()
    assert [t.tolist() for t in rng["cuda"]] == [[40] * 8]  # one state: rank 0's device
    path = checkpoint.save(str(tmp_path), {"global_step": 1, "rng": rng})
    torch_before = torch.get_rng_state()
    restored = _fake_gpus(monkeypatch, visible=2, current=1)  # rank 1 of a 2-GPU resume
    try:
        checkpoint.restore_rng(checkpoint.load(path)["rng"])
    finally:
        torch.set_rng_state(torch_before)
    assert list(restored) == [1] and restored[1].tolist() == [40] * 8
