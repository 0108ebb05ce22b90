"""An image's size from its header, and the pixel cap that keeps a decoder from being handed a bomb.

A JPEG may claim 65535x65535 pixels in a 300-byte file and a 388 KB PNG 20000x20000: decoding either
kills a training job (Pillow's ``DecompressionBombError``, DALI's "Failed to decode", or gigabytes of
memory). The header says so before anything is decoded. No PIL and no torch here: DALI's source workers
import this module.
"""

from __future__ import annotations

from .record import Buffer

# Pillow's default Image.MAX_IMAGE_PIXELS (it warns above this and refuses above twice this)
PIXEL_CAP = 89_478_485
# the largest side DALI's and libjpeg-turbo's JPEG decoders accept
JPEG_MAX_SIDE = 65_500

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def _jpeg_size(data: Buffer) -> tuple[int, int] | None:
    """(width, height) from the first frame header; None if there is none before the scan."""
    n, i = len(data), 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA) or i + 2 > n:
            return None
        length = int.from_bytes(data[i : i + 2], "big")
        if marker in _SOF_MARKERS:
            if length < 7 or i + 7 > n:
                return None
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 3 : i + 5], "big")
        if length < 2:
            return None
        i += length
    return None


def _le(data: Buffer, start: int, size: int, signed: bool = False) -> int:
    return int.from_bytes(data[start : start + size], "little", signed=signed)


def image_size(data: Buffer) -> tuple[int, int] | None:
    """(width, height) as the header of a JPEG, PNG, GIF, BMP or WebP claims it; None for other formats or
    a header too short or malformed to say (the decoder then has the last word)."""
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return _le(head, 6, 2), _le(head, 8, 2)
    if head[:2] == b"BM" and len(head) >= 26:
        if _le(head, 14, 4) == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return _le(head, 18, 2), _le(head, 20, 2)
        return abs(_le(head, 18, 4, signed=True)), abs(_le(head, 22, 4, signed=True))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            return _le(head, 26, 2) & 0x3FFF, _le(head, 28, 2) & 0x3FFF
        if chunk == b"VP8L":
            bits = _le(head, 21, 4)
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8X":
            return 1 + _le(head, 24, 3), 1 + _le(head, 27, 3)
    return None


def oversize(data: Buffer) -> str | None:
    """Why the image is too large to decode (its header's claim against the caps), or None."""
    size = image_size(data)
    if size is None:
        return None
    width, height = size
    if width * height > PIXEL_CAP:
        return f"its header claims {width}x{height} pixels, over the cap of {PIXEL_CAP} pixels"
    if _is_jpeg(data) and max(width, height) > JPEG_MAX_SIDE:
        return f"its header claims {width}x{height} pixels, a JPEG side over {JPEG_MAX_SIDE}"
    return None


def _is_jpeg(data: Buffer) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"
