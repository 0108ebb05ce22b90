"""Shared fixtures: generated ImageFolder trees, the vendored bad-images, databases converted from them,
the optional real-data tier (hymenoptera), and helpers that run the command lines in-process.

Tiers (markers registered in pyproject.toml): ``slow`` tests start torchrun or a training subprocess;
``gpu`` tests need CUDA and are skipped without it; ``realdata`` tests need the hymenoptera set from
``../shared/datasets`` beside the checkout, or from the directory ``LMDB_TEST_DATASETS`` names, and are
skipped without it. Every fixture hands tests a copy in a temporary directory, so no test, even one whose
guard regressed, can write into a source dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from datagen import GeneratedDataset, make_dataset

from lmdb_io.reading.spec import ReadSpec

REPO = Path(__file__).resolve().parents[1]
try:
    import nvidia.dali  # noqa: F401 (only probes whether DALI is installed)

    NO_DALI = None
except ImportError:
    NO_DALI = "DALI is not installed (pip install '.[cuda130]' or '.[cuda120]')"
needs_dali = pytest.mark.skipif(NO_DALI is not None, reason=NO_DALI or "")  # the DALI half of a test pair
# the fused CPU resize operator compiles on first use: where DALI and a C++ compiler are present it must build
# (a missing CUDA header fails these tests, saying which; make setup installs them)
NO_FUSED_RESIZE = NO_DALI or (None if shutil.which(os.environ.get("CXX") or "c++") else "no C++ compiler on PATH")
needs_fused_resize = pytest.mark.skipif(NO_FUSED_RESIZE is not None, reason=NO_FUSED_RESIZE or "")
VENDORED_BAD_IMAGES = REPO / "tests" / "data" / "bad-images"
DATASETS_ENV = "LMDB_TEST_DATASETS"
REAL_DATA_FIXTURES = {"hymenoptera", "real_train_db", "real_val_db"}


def real_datasets_dir() -> Path:
    """Where the real-data tier looks: $LMDB_TEST_DATASETS, else ../shared/datasets beside the checkout."""
    return Path(os.environ.get(DATASETS_ENV) or REPO.parent / "shared" / "datasets")


def _real_data_missing() -> str | None:
    where = real_datasets_dir() / "hymenoptera"
    if (where / "train").is_dir() and (where / "val").is_dir():
        return None
    return f"real-data tier: {where} not found (set {DATASETS_ENV}=DIR holding hymenoptera/ to run it)"


# -- tiers -------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _real_data_missing()
    no_gpu = None
    if any("gpu" in item.keywords for item in items):
        import torch

        if not torch.cuda.is_available():
            no_gpu = "gpu tier: needs a CUDA GPU (torch.cuda.is_available() is False)"
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)
        if missing and "realdata" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=missing))
        if no_gpu and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=no_gpu))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line on the real-data tier: how many of its tests ran or were skipped, and why."""
    reports = [r for key in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(key, [])]
    tier = [r for r in reports if r.when in ("call", "setup") and "realdata" in r.keywords]
    if not tier:
        return
    skipped = {r.nodeid for r in tier if r.skipped}
    ran = {r.nodeid for r in tier} - skipped
    missing = _real_data_missing()
    if skipped and not ran:
        line = f"real-data tier: {len(skipped)} tests skipped ({missing or 'see the skip reasons above'})"
    else:
        line = f"real-data tier: {len(ran)} tests ran on {real_datasets_dir()}" + (
            f", {len(skipped)} skipped" if skipped else ""
        )
    terminalreporter.write_line(line)


# -- running the command lines ---------------------------------------------------------------------


@dataclass
class Result:
    """What a command line did: exit code and captured output (like subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_main(main: Callable[[Sequence[str] | None], int], *args: str) -> Result:
    """Run a command line's ``main(argv)`` in this process, as its console entry point would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(int(code or 0), out.getvalue(), err.getvalue())


def convert(dataset: Path | str, output: Path | str, *extra: str, check: bool = True, quiet: bool = True) -> Result:
    """``convert.py --dataset DATASET -o OUTPUT -q EXTRA...`` in this process."""
    from lmdb_dali_train.cli import convert_main

    args = ["--dataset", str(dataset), "-o", str(output), *(["-q"] if quiet else []), *extra]
    result = run_main(convert_main, *args)
    if check and result.returncode != 0:
        raise AssertionError(f"convert.py {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def lmdb_io_cli(*args: str) -> Result:
    """``lmdb-io ARGS...`` in this process."""
    from lmdb_dali_train.cli import lmdb_io_main

    return run_main(lmdb_io_main, *args)


def repo_pythonpath() -> str:
    """The repo first, then whatever PYTHONPATH the suite runs with (a GPU machine's unpacked DALI, say)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


FAULTS_DIR = Path(__file__).parent / "faults"


def fault_env(**faults: str) -> dict[str, str]:
    """Environment entries that make a child process inject ``faults`` (``exit_after_commits="2"`` sets
    FAULT_EXIT_AFTER_COMMITS): see tests/faults/sitecustomize.py."""
    pythonpath = os.pathsep.join((str(FAULTS_DIR), repo_pythonpath()))
    return {"PYTHONPATH": pythonpath, **{f"FAULT_{name.upper()}": value for name, value in faults.items()}}


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a repo command line (``convert.py ...``, ``-m lmdb_dali_train ...``) in a subprocess with this interpreter:
    for tests whose point is the process (its exit code after a hard stop, its own interpreter)."""
    full_env = {**os.environ, "PYTHONPATH": repo_pythonpath(), **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_session(
    cmd: Sequence[str], env: dict[str, str], timeout: float, hung: str
) -> subprocess.CompletedProcess[str]:
    """``cmd`` from the repo root as a session leader; one still running after ``timeout`` is killed with its
    whole group and fails the test with ``hung`` (pytest.fail: a hang must not pass as an expected failure)."""
    with subprocess.Popen(
        list(cmd), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{hung} ({timeout:.0f} s):\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def assert_one_line_error(result: Result | subprocess.CompletedProcess[str], *fragments: str, code: int = 2) -> None:
    """A user mistake ends in one line on stderr and exit ``code``, never a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port nobody else gets while the block runs: bound (SO_REUSEADDR, not listening) and kept.

    Other processes' ``bind(0)`` never pick a bound port, while a rendezvous server binding it with
    SO_REUSEADDR (torch's TCPStore, with or without libuv) may: no window between choosing and using it.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def read_spec(path: Path | str, batch: int, **kw: Any) -> tuple[ReadSpec, dict[str, Any]]:
    """A ``ReadSpec`` of ``path`` in batches of ``batch`` from the keywords that name its fields, and the
    other keywords: the loader factory's own (device, dtype, workers, ...)."""
    fields = {f.name for f in dataclasses.fields(ReadSpec)}
    spec = ReadSpec(path=path, batch_size=batch, **{k: v for k, v in kw.items() if k in fields})
    return spec, {k: v for k, v in kw.items() if k not in fields}


def all_entries(path: Path) -> dict[bytes, bytes]:
    """Every key and value of an LMDB; the handle is closed after, so a converter may write there next."""
    from lmdb_io.env import close_shared_env, shared_env

    try:
        with shared_env(str(path)).begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        close_shared_env(str(path))


def copy_tree(source: Path, target: Path) -> Path:
    """A writable copy of ``source`` (a test works on copies, never on a source dataset)."""
    shutil.copytree(source, target, symlinks=False)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return target


# -- generated and vendored data ------------------------------------------------------------------


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    """The generated dataset (train and val ImageFolder trees), made once per test run."""
    return make_dataset(tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="session")
def train_dir(generated: GeneratedDataset) -> Path:
    return generated.train.root


@pytest.fixture(scope="session")
def val_dir(generated: GeneratedDataset) -> Path:
    return generated.val.root


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the vendored bad-images collection (tests/data/bad-images)."""
    return copy_tree(VENDORED_BAD_IMAGES, tmp_path_factory.mktemp("vendored") / "bad-images")


def undecodable_database(root: Path, count: int = 24, bad: int = 9, width: int = 40) -> Path:
    """``root/train.lmdb``: ``count`` small JPEGs of varied sizes in two classes, record ``bad`` then
    replaced by a JPEG whose header reads (100x100) but which neither DALI nor Pillow decodes (the vendored
    truncated_jpeg.jpg): it passes every check made before decoding, and DALI's pipeline fails on it."""
    import lmdb
    import numpy as np
    from PIL import Image

    from lmdb_io import ImageFormat, open_database
    from lmdb_io.env import close_shared_env
    from lmdb_io.record import encode_record

    for i in range(count):
        folder = root / "tree" / ("ants" if i % 2 else "bees")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (150 - 2 * i, width + 7 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", format="JPEG", quality=90)
    db = root / "train.lmdb"
    convert(root / "tree", db)
    database = open_database(db)
    key, target = database.key(bad), int(database.targets[bad])
    close_shared_env(str(db))
    env = lmdb.open(str(db), map_size=0)
    with env.begin(write=True) as txn:
        truncated = (VENDORED_BAD_IMAGES / "truncated_jpeg.jpg").read_bytes()
        txn.put(key, bytes(encode_record(truncated, target, ImageFormat.JPEG)))
    env.close()
    return db


@pytest.fixture(scope="session")
def train_db(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated training tree converted (its report beside it: ``train-report.json``)."""
    out = tmp_path_factory.mktemp("dbs") / "train.lmdb"
    convert(train_dir, out, "--report", str(out.parent / "train-report.json"))
    return out


@pytest.fixture(scope="session")
def val_db(val_dir: Path, train_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated validation tree, numbered as the training database (it has no ``cicadas``)."""
    out = tmp_path_factory.mktemp("dbs") / "val.lmdb"
    convert(val_dir, out, "--classes-from", str(train_db))
    return out


# -- the real-data tier ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hymenoptera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the real hymenoptera set (``train/``, ``val/``); the test is skipped without it."""
    missing = _real_data_missing()
    if missing:
        pytest.skip(missing)
    return copy_tree(real_datasets_dir() / "hymenoptera", tmp_path_factory.mktemp("real") / "hymenoptera")


@pytest.fixture(scope="session")
def real_train_db(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real-dbs") / "train.lmdb"
    convert(hymenoptera / "train", out, "--report", str(out.parent / "train-report.json"))
    return out


@pytest.fixture(scope="session")
def real_val_db(hymenoptera: Path, real_train_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real-dbs") / "val.lmdb"
    convert(hymenoptera / "val", out, "--classes-from", str(real_train_db))
    return out
