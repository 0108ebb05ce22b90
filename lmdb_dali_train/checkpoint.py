"""Complete, atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings, lists and dicts: model, optimizer, scheduler and
grad-scaler state, the position (epoch, batches done in it, global step), the arguments as a dict,
RNG states as tensors, and the identity of the training database, so a resume on other data is caught.
It is written to a temporary file and renamed, so a crash mid-write never leaves a torn checkpoint.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import numpy as np
import torch

from .config import ConfigError

# 2: adds epoch_position (samples of the epoch's global order consumed: what a resume on another world
# size or batch size needs) and world_size
FORMAT_VERSION = 2
_NAME = "checkpoint-step{:09d}.pt"
_PATTERN = re.compile(r"checkpoint-step(\d+)\.pt$")
KEEP = 2


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
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
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def save(output_dir: str, state: dict[str, Any]) -> str:
    """Write ``state`` as the checkpoint of its global step; keep the newest ``KEEP``. Returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, _NAME.format(state["global_step"]))
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    for old in all_checkpoints(output_dir)[:-KEEP]:
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


def load(path: str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint in the format this trainer writes; ConfigError for anything else."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    version = saved.get("format_version") if isinstance(saved, dict) else None
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format version {version}, this trainer reads version {FORMAT_VERSION}")
    return saved
