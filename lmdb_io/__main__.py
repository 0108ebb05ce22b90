import sys

from .cli import lmdb_io_main

sys.exit(lmdb_io_main())
