"""``python -m lmdb_dali_train``: train (the same as ``train.py`` and ``lmdb-train``)."""

import sys

from .main import main

sys.exit(main())
