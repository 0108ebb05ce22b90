"""Continuing a run in a fresh process after its DALI pipeline failed on a record.

After a decoding error DALI 2.4 may crash a later pipeline of the same process (``dali_pipeline.decode_check``:
SIGSEGV in ``Pipeline.build`` and ``Pipeline.run``), so a ``DALILoader`` whose pipeline failed builds no
other: it names the record, goes on on the CPU and asks for a fresh process. The ranks agree on it at
their next agreement point (``engine.StopSignal``; at an epoch's end after validation, which the process
that failed runs on the CPU too), save a checkpoint that lists the record (so the next process replaces it
from the start) and end:

- one process started by hand replaces itself (``os.execv``, the same process id) with its own command
  plus ``--resume auto --output-dir DIR``: nothing is replayed, nothing retyped;
- several processes end with ``ExitCode.RESTART`` for their launcher to start again: torchrun
  ``--max-restarts`` with ``--resume auto`` (the README's recommended command), or the SLURM example's loop.
"""

from __future__ import annotations

import os
import shlex
import sys

from .exit_codes import ExitCode


class FreshProcessWanted(Exception):
    """Raised by a one-process run that saved and must continue in a fresh process: the run's folder, and
    how many of ``--max-steps`` are left (None: no limit)."""

    def __init__(self, output_dir: str, max_steps_left: int | None) -> None:
        super().__init__(f"the run in {output_dir} continues in a fresh process")
        self.output_dir, self.max_steps_left = output_dir, max_steps_left


def continuation(wanted: FreshProcessWanted, command: list[str]) -> list[str]:
    """``command`` (this process's, interpreter first) continuing the saved run: the later flags win."""
    argv = [*command, "--resume", "auto", "--output-dir", wanted.output_dir]
    return argv + (["--max-steps", str(wanted.max_steps_left)] if wanted.max_steps_left is not None else [])


def continue_in_fresh_process(wanted: FreshProcessWanted) -> ExitCode:
    """Replace this process with its own command continuing the saved run (``sys.orig_argv``, run by this
    interpreter). Returns only if that fails: ``ExitCode.RESTART``, the command to run named."""
    argv = continuation(wanted, [sys.executable, *sys.orig_argv[1:]])
    print(f"continuing in a fresh process: {shlex.join(argv)}", flush=True)
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        print(f"{os.path.basename(argv[0])}: could not start it ({exc}): run it to continue", file=sys.stderr)
    return ExitCode.RESTART
