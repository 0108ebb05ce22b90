"""The SLURM example (``examples/slurm/train.sbatch``) run by bash with stand-ins for ``srun`` and ``scontrol``:
SLURM itself is not here. The stand-in ``srun`` starts the tasks as ``srun`` would (SLURM_PROCID,
SLURM_STEP_NUM_TASKS, SLURM_LOCALID set, all in one process group, as SLURM signals every process of a
step) and exits with the highest task's code, and records each step it started; ``scontrol`` names the
node and records a requeue.

The time-limit warning (``--signal=USR1@120``) is sent from the test side at a known step: every rank stops
at the same step, rank 0 saves, each exits 138, and the script requeues the job. The requeued job (the same
script, the same job id) resumes from that checkpoint and finishes, with no sample trained twice.

A DALI pipeline that fails on a record ends every rank with 75 after the save: the script starts a fresh
srun step in the same allocation, which replaces the record from the start and finishes; nothing requeued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, fault_env, needs_dali, reserved_port, undecodable_database
from test_train import _env, _events, _key_logs

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan

SBATCH = REPO / "examples" / "slurm" / "train.sbatch"
TASKS, BATCH, JOB_ID = 2, 4, "4242"
SRUN = """#!/usr/bin/env python3
import os, subprocess, sys
args = [a for a in sys.argv[1:]]
while args and args[0].startswith("--"):
    args.pop(0)
with open(os.environ["FAKE_SRUN_LOG"], "a") as log:
    print(*args, file=log)
tasks, first = int(os.environ.get("FAKE_SRUN_TASKS", "1")), None
procs = []
for rank in range(tasks):
    env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_LOCALID": str(rank)}
    procs.append(subprocess.Popen(args, env=env, process_group=0 if first is None else first))
    first = first or procs[0].pid
codes = [p.wait() for p in procs]
sys.exit(max(c if c >= 0 else 128 - c for c in codes))
"""
SCONTROL = """#!/bin/sh
case "$1" in
  show) echo 127.0.0.1 ;;
  requeue) echo "requeue $2" >> "$FAKE_SCONTROL_LOG" ;;
esac
"""
RECIPE = """data: {lmdb: true, loader: torch, workers: 0, crop_size: 32, log_keys: true}
optim: {arch: mobilenet_v3_small, epochs: 1, batch_size: 4, lr: 0.05}
run: {device: cpu, print_freq: 5}
"""
DALI_RECIPE = """data: {lmdb: true, loader: dali, workers: 0, dali_threads: 1, crop_size: 32, log_keys: true}
optim: {arch: resnet18, epochs: 2, batch_size: 4, lr: 0.05}
run: {device: cpu, print_freq: 5}
"""


def _job(tmp_path: Path, db: Path, port: int, recipe: str = RECIPE, **env: str) -> subprocess.CompletedProcess[str]:
    """One start of the job (the first, or a requeue: the same job id); ``srun.log`` gets a line a step."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        (tmp_path / "recipe.yaml").write_text(recipe)
    job = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": JOB_ID,
        "MASTER_PORT": str(port),  # the script's default is one from the job id
        "SLURM_JOB_NAME": "test",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "FAKE_SRUN_TASKS": str(TASKS),
        "FAKE_SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "FAKE_SRUN_LOG": str(tmp_path / "srun.log"),
        "CONFIG": str(tmp_path / "recipe.yaml"),
        "TRAIN": str(db),
        "VAL": "",
        "RUN_DIR": str(tmp_path / "run"),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", str(SBATCH)], cwd=REPO, env=_env(**job, **env), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_time_limit_warning_saves_requeues_and_the_requeued_job_resumes(train_db: Path, tmp_path: Path) -> None:
    with reserved_port() as port:
        first = _job(tmp_path, train_db, port, **fault_env(signal_at_step="0:3:group:USR1"))
        output = first.stdout + first.stderr
        assert first.returncode == ExitCode.WARNED == 128 + signal.SIGUSR1, output[-4000:]
        assert (tmp_path / "scontrol.log").read_text() == f"requeue {JOB_ID}\n", output[-3000:]
        run = tmp_path / "run"
        (end,) = _events(run, "end")
        assert end["reason"] == "stopped" and end["global_step"] == 3  # agreed right after the step it came in
        assert [p.name for p in run.glob("checkpoint-step*.pt")] == ["checkpoint-step000000003.pt"]

        second = _job(tmp_path, train_db, port)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert (tmp_path / "scontrol.log").read_text() == f"requeue {JOB_ID}\n"  # not requeued again
    assert "resumed from" in output and "global step 3:" in output
    steps = RankPlan(len(open_database(train_db)), BATCH, world_size=TASKS, drop_last=True).num_batches(0)
    assert _events(run, "end")[-1]["global_step"] == steps
    trained = Counter(k for rows in _key_logs(run).values() for _, _, k in rows)
    assert max(trained.values()) == 1 and sum(trained.values()) == steps * BATCH * TASKS


@pytest.mark.slow
@needs_dali
def test_a_failed_dali_pipeline_continues_in_a_fresh_srun_step(tmp_path: Path) -> None:
    """Record 21 of 48 is one DALI fails on (``undecodable_database``): both ranks save and exit 75 (DALI may
    crash a pipeline built in a process where one failed), and the script starts a second srun step in the
    same allocation, which replaces the record from the start and finishes the 2 epochs; nothing requeued."""
    bad = 21
    db = undecodable_database(tmp_path / "data", count=48, bad=bad)
    database = open_database(db)
    keys, bad_key = {database.key(i).decode() for i in range(len(database))}, database.key(bad).decode()
    with reserved_port() as port:
        job = _job(tmp_path, db, port, recipe=DALI_RECIPE)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-4000:]
    steps = (tmp_path / "srun.log").read_text().splitlines()
    assert len(steps) == 2 and all("--resume auto" in step for step in steps), output[-4000:]
    assert output.count("a fresh srun step continues the run") == 1
    assert not (tmp_path / "scontrol.log").exists()  # never requeued
    run = tmp_path / "run"
    _, *rows = (run / "bad-records.tsv").read_text(encoding="utf-8").splitlines()
    assert [row.split("\t")[0] for row in rows] == [bad_key]
    assert [e["reason"] for e in _events(run, "end")] == ["fresh_process", "done"]
    trained = Counter((epoch, key) for rows in _key_logs(run).values() for epoch, _, key in rows)
    assert max(trained.values()) == 1  # no sample twice in an epoch, the ranks' and the two steps' together
    assert set(trained) == {(epoch, key) for epoch in (0, 1) for key in keys - {bad_key}}  # the rest, all
