"""``lmdb-train``'s entry point, which imports the trainer (and torch) only when called.

pip writes a console script that imports its entry's module at the top level, and DALI's source workers,
started by spawn, re-run the parent's main script (as ``__mp_main__``) before taking work: the module
named in pyproject.toml must import nothing heavy, or every worker loads torch.
"""

from __future__ import annotations

from collections.abc import Sequence


def train_main(argv: Sequence[str] | None = None) -> int:
    """``lmdb_dali_train.main.main``, imported on the call, once the flags parse: ``--help``, ``--version``
    and a mistyped flag answer at once, without loading torch."""
    from .flags import parse_args

    parse_args(argv)
    from .main import main

    return main(argv)
