"""Every way to start training keeps torch out of DALI's spawned source workers.

DALI starts its Python source workers with multiprocessing's spawn, and a spawned child re-runs the
parent's main script (as ``__mp_main__``) before it takes work: an entry point that imports the trainer at
its top level loads torch into every worker (train and val, per rank). Each entry point here trains two
steps on the CPU with ``-j 2`` (two source workers for train, two for val); the workers report what they
import (``tests/faults/sitecustomize.py``, ``FAULT_SPAWNED_IMPORTS``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, fault_env, needs_dali

from lmdb_dali_train.data import val_share

TIMEOUT = 300


def console_script(folder: Path) -> Path:
    """``lmdb-train`` as pip writes it for pyproject's ``[project.scripts]`` entry: the entry's module
    imported at the script's top level, its function called under ``__main__``."""
    declared = re.search(r'^lmdb-train\s*=\s*"([\w.]+):(\w+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert declared, "pyproject.toml declares no lmdb-train script"
    module, function = declared.groups()
    script = folder / "lmdb-train"
    script.write_text(
        f"#!{sys.executable}\n"
        "import re\nimport sys\n"
        f"from {module} import {function}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({function}())\n"
    )
    return script


ENTRY_POINTS = ["train.py", "python -m lmdb_dali_train", "lmdb-train"]


@pytest.mark.slow
@needs_dali
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_spawned_source_workers_never_import_torch(entry: str, train_db: Path, val_db: Path, tmp_path: Path) -> None:
    command = {
        "train.py": [str(REPO / "train.py")],
        "python -m lmdb_dali_train": ["-m", "lmdb_dali_train"],
        "lmdb-train": [str(console_script(tmp_path))],
    }[entry]
    witness = tmp_path / "imports"
    witness.mkdir()
    flags = ["--loader", "dali", "--lmdb", "--train", str(train_db), "--val", str(val_db), "-j", "2"]
    flags += ["--max-steps", "2", "-b", "8", "-a", "resnet18", "--crop-size", "32", "--val-resize", "36"]
    flags += ["--device", "cpu", "--output-dir", str(tmp_path / "run")]
    env = {**fault_env(spawned_imports=str(witness)), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *command, *flags],
        cwd=tmp_path,  # not the checkout: the entry point must find the package as installed (PYTHONPATH here)
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    workers = sorted(p.name for p in witness.glob("source-*"))
    expected = 2 + val_share(2)  # -j 2 for training, validation's share of it: the witness works
    assert len(workers) >= expected, f"expected {expected} source workers (train + val), saw {workers}"
    torch_in = {p.name: p.read_text() for p in witness.glob("torch-*")}
    assert not torch_in, f"{entry}: {len(torch_in)} spawned worker(s) imported torch: {torch_in}"
