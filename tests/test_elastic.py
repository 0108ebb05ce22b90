"""Elastic restarts: under ``torchrun --max-restarts 1``, a rank killed with SIGKILL mid-epoch (rank 0 or
rank 1, at a step before, on or after a ``--save-every`` checkpoint, both loaders) makes the group restart
and continue from the newest intact checkpoint with ``--resume auto``; the run ends with exit 0, every step
of the epoch trained, and no sample trained twice beyond one save interval.

The kill comes from the test side (``tests/faults/sitecustomize.py``, ``FAULT_KILL_AT_STEP``), in
torchrun's first round only. Each rank's keys (``--log-keys``) are flushed at every step, so the keys of
the steps a rank finished before it died are in its file. A stop signal while the ranks meet ends a rank
at once (a round torchrun stops must not wait out --dist-timeout).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, fault_env, needs_dali, reserved_port, run_in_session
from test_train import _env, _events, _key_logs

from lmdb_io import open_database
from lmdb_io.reading.plan import RankPlan

SAVE_EVERY, BATCH, WORLD = 3, 4, 2
SMALL = ["-a", "mobilenet_v3_small", "--crop-size", "32", "--device", "cpu", "--print-freq", "5", "-j", "0"]
# (loader, rank killed, after global step): before the first save, on a save's step (killed before it
# saves), after one, near the epoch's end; rank 0 (the store's beacon, the writer) and rank 1 in turn
TRIALS = [
    pytest.param("torch", 0, 2, id="torch-rank0-step2"),
    pytest.param("torch", 1, 5, id="torch-rank1-step5"),
    pytest.param("torch", 0, 7, id="torch-rank0-step7"),
    pytest.param("torch", 1, 9, id="torch-rank1-step9"),
    pytest.param("dali", 1, 3, marks=needs_dali, id="dali-rank1-step3"),
    pytest.param("dali", 0, 6, marks=needs_dali, id="dali-rank0-step6"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("loader", "rank", "step"), TRIALS)
def test_a_killed_rank_restarts_the_group_from_the_newest_checkpoint(
    train_db: Path, tmp_path: Path, loader: str, rank: int, step: int
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)]
    cmd += ["--max-restarts", "1", "train.py", "--loader", loader, "--lmdb", "--train", str(train_db)]
    cmd += ["--epochs", "1", "-b", str(BATCH), "--lr", "0.05", "--log-keys", *SMALL]
    cmd += ["--save-every", str(SAVE_EVERY), "--resume", "auto", "--output-dir", str(out)]
    env = _env(**fault_env(kill_at_step=f"{rank}:{step}"), OMP_NUM_THREADS="1")
    proc = run_in_session(cmd, env, timeout=150, hung="the elastic run did not end")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "connectFullMesh" not in output and "Connection refused" not in output, output[-4000:]

    steps = RankPlan(len(open_database(train_db)), BATCH, world_size=WORLD, drop_last=True).num_batches(0)
    starts = _events(out, "start")
    assert len(starts) == 2, "the group did not restart once"  # the first round and the restarted one
    last_save = (step - 1) // SAVE_EVERY * SAVE_EVERY  # the kill comes before the save of its own step
    if last_save:
        assert f"resumed from {out / f'checkpoint-step{last_save:09d}.pt'}, global step {last_save}:" in output
    else:
        assert "--resume auto: no checkpoint" in output.split("run folder")[-1]  # the restart started afresh
    (end,) = _events(out, "end")
    assert end["reason"] == "done" and end["global_step"] == steps

    logs = _key_logs(out)
    assert sorted(logs) == list(range(WORLD))
    for r, rows in logs.items():  # every step of the epoch trained on each rank (the killed one's too)
        assert {s for _, s, _ in rows} == set(range(1, steps + 1)), r
    trained = Counter(k for rows in logs.values() for _, _, k in rows)
    twice = sum(n - 1 for n in trained.values())
    assert twice <= SAVE_EVERY * BATCH * WORLD, f"{twice} samples trained again: more than one save interval"
    replayed = step - last_save  # 1 to SAVE_EVERY steps; the killed step is not in the killed rank's log
    assert twice >= (replayed - 1) * BATCH * WORLD


@pytest.mark.slow
def test_a_stop_signal_while_the_ranks_meet_ends_the_process_at_once(train_db: Path, tmp_path: Path) -> None:
    """Rank 0 waiting for a rank that never comes (torchrun stopping a failed round) ends on SIGTERM at once,
    not after --dist-timeout: there is nothing to save yet."""
    with reserved_port() as port:
        env = _env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "train.py", "--loader", "torch", "--lmdb", "--train", str(train_db), *SMALL]
        cmd += ["--output-dir", str(tmp_path / "run"), "--dist-timeout", "120"]
        with subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        ) as proc:
            try:
                deadline = time.monotonic() + 60
                while not _listening(port) and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)  # until rank 0 serves the rendezvous and waits in it
                assert proc.poll() is None and _listening(port), proc.communicate()
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=20)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, out[-2000:], err[-2000:])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_the_save_cadence_by_steps_and_by_rank_0s_clock() -> None:
    from lmdb_dali_train.engine import SaveCadence, StopSignal

    now = [0.0]
    steps = SaveCadence(3, None, is_main=True, clock=lambda: now[0])
    assert [s for s in range(1, 10) if steps.due(s, agreed=False)] == [3, 6, 9] and not steps.asks()
    minutes = SaveCadence(None, 0.5, is_main=True, clock=lambda: now[0])
    other_rank = SaveCadence(None, 0.5, is_main=False, clock=lambda: now[0])
    now[0] = 29.0
    assert not minutes.asks()
    now[0] = 30.0
    assert minutes.asks() and not other_rank.asks()  # rank 0's clock decides; the agreement tells the rest
    assert minutes.due(7, agreed=True) and not minutes.due(7, agreed=False)
    minutes.saved()
    assert not minutes.asks()
    stop = StopSignal()
    try:  # one process: the wish to save is agreed as asked, a stop only after a signal
        assert not stop.agreed(save=True) and stop.save_agreed
        assert not stop.agreed() and not stop.save_agreed
    finally:
        stop.restore()
