"""Shared fixtures: the real images in ../shared/datasets and databases converted from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
HYMENOPTERA = DATASETS / "hymenoptera"
BAD_IMAGES = DATASETS / "bad-images"


def _require(path: Path) -> Path:
    if not path.is_dir():
        raise RuntimeError(f"test data missing: {path} (the shared datasets must sit beside the checkout)")
    return path


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run a repo command line (``convert.py ...`` or ``-m lmdb_io ...``) with this interpreter."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def convert(
    dataset: Path | str, output: Path | str, *extra: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    return run_cli("convert.py", "--dataset", str(dataset), "-o", str(output), "-q", *extra, env=env, check=check)


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    return _require(HYMENOPTERA)


@pytest.fixture(scope="session")
def bad_images() -> Path:
    return _require(BAD_IMAGES)


@pytest.fixture(scope="session")
def train_db(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dbs") / "train.lmdb"
    convert(hymenoptera / "train", out, "--report", str(out.parent / "train-report.json"))
    return out


@pytest.fixture(scope="session")
def val_db(hymenoptera: Path, train_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dbs") / "val.lmdb"
    convert(hymenoptera / "val", out, "--classes-from", str(train_db))
    return out


def all_entries(path: Path) -> dict[bytes, bytes]:
    """Every key and value of an LMDB; the handle is closed after, so a converter may write there next."""
    from lmdb_io.env import close_shared_env, shared_env

    try:
        with shared_env(str(path)).begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        close_shared_env(str(path))
