#!/usr/bin/env python3
"""Train a torchvision classifier from an lmdb_io database with DALI or torchvision: see --help.

The trainer is imported only when this file runs as the program: DALI's source workers start by spawn,
and a spawned child re-runs the parent's main file (as ``__mp_main__``), so a top-level import would load
torch into every worker.
"""

import sys

if __name__ == "__main__":
    from lmdb_dali_train.entry import train_main

    sys.exit(train_main())
