"""``python -m lmdb_dali_train``: train (the same as ``train.py`` and ``lmdb-train``).

Spawned children (DALI's source workers) never re-run a package's ``__main__``; the import stays under the
guard all the same, as in ``train.py``.
"""

import sys

if __name__ == "__main__":
    from .entry import train_main

    sys.exit(train_main())
