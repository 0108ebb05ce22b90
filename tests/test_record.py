"""The record header: round trip and each refusal."""

from __future__ import annotations

import pytest

from lmdb_io import CorruptRecordError, ImageFormat
from lmdb_io.record import HEADER_SIZE, decode_record, encode_record


def test_round_trip_without_copy() -> None:
    value = encode_record(b"\xff\xd8payload\xff\xd9", 42, ImageFormat.JPEG)
    assert len(value) == HEADER_SIZE + 11
    payload, label, fmt = decode_record(value)
    assert bytes(payload) == b"\xff\xd8payload\xff\xd9" and label == 42 and fmt == ImageFormat.JPEG
    assert payload.obj is value  # a view into the stored bytes


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v: v[:10], "shorter than"),
        (lambda v: b"XXXX" + v[4:], "bad magic"),
        (lambda v: v[:4] + b"\x09" + v[5:], "record version 9"),
        (lambda v: v[:-1], "truncated record"),
        (lambda v: v[:-1] + b"!", "checksum mismatch"),
    ],
)
def test_refusals_name_the_key(mutate, message: str) -> None:
    value = encode_record(b"0123456789", 1, ImageFormat.PNG)
    with pytest.raises(CorruptRecordError, match=message) as info:
        decode_record(mutate(value), key="00000042")
    assert "00000042" in str(info.value)
