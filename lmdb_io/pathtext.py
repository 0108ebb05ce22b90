"""One lossless text form for source paths, file names that are not UTF-8 included.

Paths are ``str`` as ``os`` hands them out: bytes of a name that are not UTF-8 arrive as lone surrogates
(PEP 383, ``surrogateescape``), and ``os.fsencode(path)`` gives the original bytes back. Wherever paths
are written as JSON (``__paths__``, the ``--report`` file) such a surrogate is written as its ``\\udcXX``
escape, which ``json.loads`` turns back into the same surrogate, and every other character as UTF-8: the
file is valid UTF-8 and nothing is lost. Messages show those bytes as ``\\xNN`` (``printable``), which
every terminal can print.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def json_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with UTF-8 text kept as it is and lone surrogates escaped (valid UTF-8 when encoded)."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    # a lone surrogate can only stand inside a JSON string, where its escape means the same character
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_bytes(obj: Any, **kwargs: Any) -> bytes:
    return json_dumps(obj, **kwargs).encode("utf-8")


def json_loads(raw: bytes) -> Any:
    """The inverse of ``json_bytes``; also reads JSON whose non-UTF-8 bytes were written raw (databases
    written before this module), giving the same surrogates."""
    return json.loads(raw.decode("utf-8", "surrogateescape"))


def printable(path: str) -> str:
    """``path`` for a message: bytes that are not UTF-8 shown as ``\\xNN``."""
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return path.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
