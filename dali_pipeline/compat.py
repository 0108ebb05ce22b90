"""Small shims over the differences between DALI 1.34 (the last nvidia-dali-cuda110) and DALI 2.x.

Both expose the same operators; newer ones accept a few more arguments. Rather than branching on
version numbers, ask the installed operator schema which arguments it takes.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _argument_names(schema_name: str) -> frozenset[str]:
    from nvidia.dali import backend

    return frozenset(backend.GetSchema(schema_name).GetArgumentNames())


def supported(schema_name: str, **kwargs: Any) -> dict[str, Any]:
    """``kwargs`` less the arguments this DALI's ``schema_name`` operator does not know."""
    names = _argument_names(schema_name)
    return {k: v for k, v in kwargs.items() if k in names}


def no_exif_rotation(schema_name: str) -> dict[str, Any]:
    """Decode as ImageFolder does, ignoring EXIF orientation.

    DALI 2.x applies EXIF orientation by default and takes ``adjust_orientation=False``; DALI 1.34
    never applies it and rejects the argument.
    """
    return supported(schema_name, adjust_orientation=False)
