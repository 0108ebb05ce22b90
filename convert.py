#!/usr/bin/env python3
"""Convert an ImageFolder tree into one LMDB: ``python convert.py --dataset DIR -o OUT`` (see --help)."""

import sys

from lmdb_dali_train.cli import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
