#!/usr/bin/env python3
"""Train a torchvision classifier from an lmdb_io database with DALI or torchvision: see --help."""

import sys

from lmdb_dali_train.main import main

if __name__ == "__main__":
    sys.exit(main())
