"""One row of ``bench.gpu_check`` in a process of its own (``bench.lib.gpu.child``); not run by hand. The
import stays under the ``__main__`` guard: DALI's spawned source workers re-run this module and must not load
torch."""

import sys

if __name__ == "__main__":
    from bench.lib.gpu.child import run_row

    sys.exit(run_row(sys.argv[1], sys.argv[2]))
