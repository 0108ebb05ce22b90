"""A row in a process of its own (``python -m bench.gpu_row``), killed whole after its budget: a hung row
costs only itself, and the check never holds a CUDA context through the training rows."""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

from .. import last_line
from ..data import REPO
from . import RowFailed, RowTimedOut, describe


def repo_env(cpu: bool = False) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every descendant, those in sessions of their own too (the tier's
    ``train.py`` runs, started with ``start_new_session``, which ``killpg`` alone leaves holding the GPU):
    the tree is stopped first, then listed again, so no process escapes by starting or being reparented."""
    import psutil

    def tree() -> dict[int, Any]:
        try:
            root = psutil.Process(pid)
            return {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.Error:
            return {}

    stopped = tree()
    for sig, procs in ((signal.SIGSTOP, stopped), (signal.SIGKILL, stopped | tree())):
        for proc in procs.values():
            with contextlib.suppress(psutil.Error, OSError):
                group = os.getpgid(proc.pid)
                proc.send_signal(sig)
                if group != os.getpgrp():
                    os.killpg(group, sig)


def in_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python -m bench.gpu_row`` on ``spec`` in its own process group, killed whole after ``timeout`` s
    (``RowTimedOut``); its result, or ``RowFailed`` with its error."""
    with tempfile.TemporaryDirectory(prefix="gpu_row_") as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec, default=str))
        cmd = [sys.executable, "-m", "bench.gpu_row", str(spec_file), str(out_file)]
        proc = subprocess.Popen(cmd, cwd=REPO, env=repo_env(), stdout=PIPE, stderr=STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.communicate()
            raise RowTimedOut(f"timed out after {timeout:.0f} s (--row-budget)") from None
        found = json.loads(out_file.read_text()) if out_file.is_file() and out_file.stat().st_size else None
    if found is None or "error" in found:
        why = found["error"] if found else f"exit {proc.returncode}: {last_line(output.decode(errors='replace'))}"
        raise RowFailed(why, {"output": output.decode(errors="replace")[-4000:]})
    return found


def run_row(spec_path: str, out_path: str) -> int:
    """``bench.gpu_row``'s body: the GPU probe or one loader row measured here, its result (or error) as JSON."""
    from .loader import time_loader
    from .probe import Data, gpu_facts

    spec = json.loads(Path(spec_path).read_text())
    try:
        if spec["kind"] == "probe":
            found = gpu_facts()
        else:
            args, d = argparse.Namespace(**spec["args"]), Data(Path(spec["work"]), Path(spec["db"]), spec["length"])
            found = time_loader(args, d, spec["key"])
    except (Exception, SystemExit) as e:
        found = {"error": e.args[0] if isinstance(e, RowFailed) else describe(e), "traceback": traceback.format_exc()}
    Path(out_path).write_text(json.dumps(found, default=str))
    return 0
