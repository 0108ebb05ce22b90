"""Complete, atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings, lists and dicts: model, optimizer, scheduler and
grad-scaler state, the position (epoch, batches done in it, global step), the arguments as a dict,
RNG states as tensors, and the identity of the training database, so a resume on other data is caught.
It is written to a temporary file, fsynced, and renamed (then the directory is fsynced), so a crash or a
power cut mid-write never leaves a torn checkpoint under a checkpoint's name; a full disk is one line with
the size needed, and the temporary file is removed (``clean_stale_temps`` removes those of killed runs).

Integrity: each checkpoint carries the SHA-256 of its own bytes in the zip archive's comment (the last
bytes of the file: ``lmdb-dali-train sha256 <64 hex digits>``), taken over everything before the
comment-length field. The file stays an ordinary ``torch.save`` archive (``torch.load`` reads it as is);
``load`` checks the digest first, so random bytes written into a checkpoint, a truncated one or a file from
another program is a one-line ``CorruptCheckpointError``, never a traceback or silently wrong weights.
``save`` reads the new file back and verifies it before rotating older ones away, so the newest intact
checkpoint is never rotated out by a bad write; ``latest_intact`` is ``--resume auto``'s choice: the
newest checkpoint that verifies, with the ones skipped and why.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import os
import re
import shutil
import struct
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

# 2: adds epoch_position (samples of the epoch's global order consumed: what a resume on another world
# size or batch size needs) and world_size
# 3: the SHA-256 digest in the zip comment (files of version 2 have none and are refused)
FORMAT_VERSION = 3
_NAME = "checkpoint-step{:09d}.pt"
_PATTERN = re.compile(r"checkpoint-step(\d+)\.pt$")
KEEP = 2
_DIGEST_TAG = b"lmdb-dali-train sha256 "
_COMMENT_LEN = len(_DIGEST_TAG) + 64
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_SIZE = 22  # the zip end-of-central-directory record, whose last field is the comment length


class CorruptCheckpointError(ConfigError):
    """A checkpoint whose bytes do not match the digest written with it (or that has none)."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's own device only: a rank uses one GPU, and the run that resumes may see fewer
        state["cuda"] = [torch.cuda.get_rng_state()]
    np_state = np.random.get_state(legacy=True)  # the default; numpy's stubs give the dict form to a bare call
    assert isinstance(np_state, tuple)  # the legacy form, since the global generator is MT19937
    kind, keys, pos, has_gauss, gauss = np_state
    state["numpy"] = {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put the saved generators back; the CUDA one onto this process's current device only (``cuda_state_for``)."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = cuda_state_for(state.get("cuda") or [], torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)  # the current device's
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def cuda_state_for(saved: list[torch.Tensor], device: int) -> torch.Tensor | None:
    """The saved CUDA generator state that applies to ``device`` (an index of this process's visible ones).

    Checkpoints of this version hold one state, the saving rank's own device's, which every rank restores
    onto its own device (``torch.manual_seed`` seeds every device alike, so the ranks' states start equal).
    Older ones hold every device the saving process saw (``get_rng_state_all``): the entry of ``device``'s
    index where there is one, else the first. Indexing every saved device, as ``set_rng_state_all`` does,
    fails when fewer GPUs are visible than when it was saved (8 saved, ``CUDA_VISIBLE_DEVICES=0``)."""
    if not saved:
        return None
    return saved[device] if device < len(saved) else saved[0]


def _encode(state: dict[str, Any]) -> bytes:
    """``torch.save``'s archive of ``state`` with the digest of its bytes as the zip comment."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    archive = buffer.getvalue()
    if archive[-_EOCD_SIZE : -_EOCD_SIZE + 4] != _EOCD_SIGNATURE or archive[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote an archive without a plain end record: cannot add the digest")
    body = archive[:-2]  # everything up to the comment length, which is what the digest covers
    return body + struct.pack("<H", _COMMENT_LEN) + _DIGEST_TAG + hashlib.sha256(body).hexdigest().encode()


def _decode(path: str, data: bytes) -> bytes:
    """The archive's bytes if its digest holds; CorruptCheckpointError (one line naming ``path``) if not."""
    comment = data[-_COMMENT_LEN:]
    body = data[: -_COMMENT_LEN - 2]
    if (
        len(data) < _EOCD_SIZE + _COMMENT_LEN
        or not comment.startswith(_DIGEST_TAG)
        or data[-_COMMENT_LEN - 2 : -_COMMENT_LEN] != struct.pack("<H", _COMMENT_LEN)
    ):
        raise CorruptCheckpointError(
            f"{path}: corrupt checkpoint: no integrity digest at its end (truncated, or not written by this "
            f"trainer version {FORMAT_VERSION})"
        )
    if hashlib.sha256(body).hexdigest().encode() != comment[len(_DIGEST_TAG) :]:
        raise CorruptCheckpointError(f"{path}: corrupt checkpoint: its bytes do not match its sha256 digest")
    return data


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, permissions): one line naming the directory."""


def _write(path: str, data: bytes) -> None:
    """All of ``data`` into a new file at ``path``, fsynced before it is closed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(output_dir: str, name: str, size: int, exc: OSError) -> CheckpointWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(output_dir).free:,} bytes free"
        except OSError:
            free = "free space unknown"
        return CheckpointWriteError(
            f"cannot save {name} in {output_dir}: no space left on the device (the checkpoint needs "
            f"{size:,} bytes, {free}); free space or point --output-dir elsewhere, then --resume auto"
        )
    return CheckpointWriteError(f"cannot save {name} in {output_dir}: {exc.strerror or exc}")


def clean_stale_temps(output_dir: str) -> list[str]:
    """Remove the temporary files (``*.pt.tmp-PID``) of saves that never finished; returns their paths.

    Call it at the start of a run, before any save of this run, from one process."""
    stale = [p for p in glob.glob(os.path.join(glob.escape(output_dir), "*.pt.tmp-*")) if _is_temp(p)]
    for path in stale:
        os.remove(path)
    return stale


def _is_temp(path: str) -> bool:
    return re.search(r"(checkpoint-step\d+|best|weights)\.pt\.tmp-\d+$", path) is not None


def write_file(output_dir: str, name: str, obj: Any) -> str:
    """``torch.save(obj)`` as ``output_dir/name``, atomically (a temporary file, fsynced, renamed, the directory
    fsynced): a crash leaves the previous file or the new one, never a torn one. No digest is added (the file
    is exactly what ``torch.save`` writes). A failed write removes its temporary file and raises
    ``CheckpointWriteError``. Returns the path."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _commit(output_dir, name, buffer.getvalue())


def _commit(output_dir: str, name: str, data: bytes, check: bool = False) -> str:
    """``data`` into ``output_dir/name`` through a temporary file; with ``check``, verified before the rename."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        try:
            _write(tmp, data)
        except OSError as exc:
            raise _write_error(output_dir, name, len(data), exc) from exc
        if check:
            verify(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    _fsync_dir(output_dir)
    return path


def save(output_dir: str, state: dict[str, Any], keep: int = KEEP) -> str:
    """Write ``state`` as the checkpoint of its global step; keep the newest ``keep``. Returns the path.

    The new file is read back and verified before older checkpoints are rotated away: a write that does
    not verify is removed and raises ``CorruptCheckpointError``, leaving the older checkpoints in place.
    Durable: the file is fsynced before the rename and its directory after it. A write that fails (disk
    full) removes its temporary file and raises ``CheckpointWriteError``, one line with the size needed.
    """
    path = _commit(output_dir, _NAME.format(state["global_step"]), _encode(state), check=True)
    for old in all_checkpoints(output_dir)[:-keep]:
        if old != path:
            os.remove(old)
    return path


def all_checkpoints(output_dir: str) -> list[str]:
    steps = {
        p: int(m.group(1))
        for p in glob.glob(os.path.join(output_dir, "checkpoint-step*.pt"))
        if (m := _PATTERN.search(p))
    }
    return sorted(steps, key=steps.__getitem__)


def latest(output_dir: str) -> str | None:
    found = all_checkpoints(output_dir)
    return found[-1] if found else None


def verify(path: str) -> None:
    """CorruptCheckpointError unless ``path``'s bytes match the digest written with them."""
    with open(path, "rb") as f:
        _decode(path, f.read())


def latest_intact(output_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint that verifies (None if none does), and the newer ones skipped with why."""
    skipped: list[tuple[str, str]] = []
    for path in reversed(all_checkpoints(output_dir)):
        try:
            verify(path)
        except CorruptCheckpointError as exc:
            skipped.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        return path, skipped
    return None, skipped


def load(path: str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint in the format this trainer writes, its digest verified; ConfigError for anything else."""
    with open(path, "rb") as f:
        data = _decode(path, f.read())
    saved = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    version = saved.get("format_version") if isinstance(saved, dict) else None
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format version {version}, this trainer reads version {FORMAT_VERSION}")
    return saved
