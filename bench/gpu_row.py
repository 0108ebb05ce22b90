"""One row of ``bench.gpu_check`` in a process of its own (the GPU probe or a loader-only row), started by
``bench.lib.gpu.child.in_child`` with a spec file and a result file. Not meant to be run by hand.

The import stays under the ``__main__`` guard: DALI's source workers start by spawn and re-run this module
(as ``__mp_main__``), and must not load torch, as in training (``train.py``).
"""

import sys

if __name__ == "__main__":
    from bench.lib.gpu.child import run_row

    sys.exit(run_row(sys.argv[1], sys.argv[2]))
