"""Reserved keys of an lmdb_io database and the JSON ``__meta__`` they describe.

The key schema is the original PyTorch-LMDB one (one key per image, ``__keys__``, ``__len__``), extended
with entries a reader needs so that nothing has to be hard-coded or scanned:

    <key>          a record (see ``record.py``); keys are zero-padded decimal indices, all one width,
                   so byte order is index order
    __keys__       every image key in index order, joined by b"\\n" (ASCII)
    __len__        the number of images, ASCII decimal
    __targets__    every label in index order, int64 little endian
    __paths__      every image's path relative to the dataset root, JSON list (for messages and logs);
                   bytes of a name that are not UTF-8 as \\udcXX escapes (see pathtext.py)
    __meta__       JSON: format, schema version, classes, class_to_idx, counts, tool version, the options
                   that decide the content ("options": keep_format, verify_decode, and max_size / quality,
                   null when not given: see reencode.py), and the fingerprint of the job (relative paths,
                   labels, classes, options) checked by --resume
    __progress__   present only while a conversion is unfinished: JSON counts and the job's fingerprint
    __progress_log__<n>  likewise: JSON of the files skipped or transcoded in commit n (for the report)

``__keys__``, ``__len__``, ``__targets__``, ``__paths__`` and ``__meta__`` are written in the final
transaction, so their presence is the mark of a complete database.
"""

from __future__ import annotations

FORMAT_NAME = "lmdb-imagefolder"
SCHEMA_VERSION = 1

KEYS_KEY = b"__keys__"
LEN_KEY = b"__len__"
TARGETS_KEY = b"__targets__"
PATHS_KEY = b"__paths__"
META_KEY = b"__meta__"
PROGRESS_KEY = b"__progress__"
PROGRESS_LOG_PREFIX = b"__progress_log__"

FINAL_KEYS = (KEYS_KEY, LEN_KEY, TARGETS_KEY, PATHS_KEY, META_KEY)
MIN_KEY_WIDTH = 8


def key_width(num_candidates: int) -> int:
    """Digits per key: enough for every scanned file, at least 8, fixed before the first write."""
    return max(MIN_KEY_WIDTH, len(str(max(num_candidates - 1, 0))))


def make_key(index: int, width: int) -> bytes:
    return b"%0*d" % (width, index)


def progress_log_key(commit: int) -> bytes:
    return PROGRESS_LOG_PREFIX + b"%08d" % commit
