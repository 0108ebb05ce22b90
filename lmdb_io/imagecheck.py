"""Decide, from a file's bytes, whether to store it as it is, transcode it, or skip it.

Default checks are cheap and structural: the format is sniffed from magic bytes (never the extension),
and a JPEG's markers are walked up to the start of scan, then its tail is searched for the end-of-image
marker, which catches most truncated files. Only files that fail those checks, or that are not plain
8-bit Huffman JPEGs with 1 or 3 components (what GPU decoders take), are decoded with Pillow: those that
decode are transcoded to an RGB JPEG (at quality 95, or under ``--max-size`` / ``--quality``: see
``reencode``), those that don't are skipped with the reason. A frame too large
to decode (``too_large``: a JPEG side over ``JPEG_MAX_SIDE``, or more than ``PIXEL_CAP`` pixels), read
from the header before any decode, is skipped with the reason whatever the options.
"""

from __future__ import annotations

import enum
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .record import Buffer, ImageFormat
from .reencode import JPEG_MAX_SIDE, NONE, Reencode

if TYPE_CHECKING:
    from PIL import Image

# An end-of-image marker this close to the end counts: some writers pad or append a few bytes.
EOI_SEARCH_BYTES = 1024

# Pillow's default ``MAX_IMAGE_PIXELS`` (1024**3 // 4 // 3) doubled: above it ``Image.open`` raises
# DecompressionBombError, and DALI's decoders would allocate the whole frame (3 bytes a pixel: 537 MB here).
PIXEL_CAP = 2 * (1024 * 1024 * 1024 // 4 // 3)  # 178,956,970 pixels
UNKNOWN_FORMAT = "not a known image format by its magic bytes"
# the reason a file Pillow cannot identify either is skipped with (prepare skips such files before reading them)
UNIDENTIFIED = f"{UNKNOWN_FORMAT}; Pillow: cannot identify image file"

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PLAIN_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7}


class Action(enum.Enum):
    """What the converter does with a file (the values are the words reports use)."""

    STORE_ORIGINAL = "original"
    STORE_REENCODED = "reencoded"  # an original re-encoded under --max-size / --quality (see reencode.py)
    STORE_TRANSCODED = "transcoded"
    SKIP = "skipped"


class StructureError(ValueError):
    """The bytes do not hold a well-formed image of the sniffed format."""


@dataclass(frozen=True)
class Verdict:
    """What to do with one file: ``action`` is original, transcoded or skipped; ``size`` is an original's
    (width, height) as its header gives it, where the checks read it (None where they did not)."""

    action: Action
    payload: Buffer | None
    image_format: ImageFormat
    reason: str = ""
    size: tuple[int, int] | None = None


def sniff_format(data: Buffer) -> ImageFormat:
    if data[:3] == b"\xff\xd8\xff":
        return ImageFormat.JPEG
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageFormat.PNG
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ImageFormat.GIF
    if data[:2] == b"BM":
        return ImageFormat.BMP
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    if len(data) > 2 and data[0] == 0x50 and data[1] in b"123456":  # "P1".."P6"
        return ImageFormat.PNM
    return ImageFormat.UNKNOWN


@dataclass(frozen=True)
class JpegInfo:
    sof_marker: int
    precision: int
    width: int
    height: int
    components: int

    @property
    def gpu_friendly(self) -> bool:
        """8-bit Huffman (baseline/progressive), grayscale or YCbCr: stored untouched."""
        return self.sof_marker in _PLAIN_SOF and self.precision == 8 and self.components in (1, 3)


def parse_jpeg(data: Buffer) -> JpegInfo:
    """Walk a JPEG's marker segments up to the start of scan; raise StructureError on any defect."""
    frame, scan_start = _walk_jpeg_header(data)
    if bytes(data[max(scan_start, len(data) - EOI_SEARCH_BYTES) :]).rfind(b"\xff\xd9") < 0:
        raise StructureError("no JPEG end-of-image marker (truncated file)")
    return frame


def _walk_jpeg_header(data: Buffer) -> tuple[JpegInfo, int]:
    """The frame header and where the scan data starts; StructureError on any defect of the header."""
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise StructureError("no JPEG start-of-image marker")
    i = 2
    frame: JpegInfo | None = None
    while True:
        if i >= n:
            raise StructureError("file ends before the start of scan (truncated header)")
        if data[i] != 0xFF:
            raise StructureError(f"corrupt JPEG header: expected a marker at byte {i}")
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            raise StructureError("file ends inside a marker (truncated header)")
        marker = data[i]
        i += 1
        if marker in _STANDALONE:  # TEM or RSTn before the scan: DALI's decoder refuses the file
            kind = "TEM" if marker == 0x01 else "RST"
            raise StructureError(
                f"{kind} marker FF{marker:02X} at byte {i - 2} in the header, before the start of scan"
            )
        if marker == 0xD8:
            raise StructureError("second start-of-image marker inside the header")
        if marker == 0xD9:
            raise StructureError("end-of-image marker before any image data")
        if i + 2 > n:
            raise StructureError("file ends inside a segment length (truncated header)")
        seg_len = int.from_bytes(data[i : i + 2], "big")
        if seg_len < 2 or i + seg_len > n:
            raise StructureError(f"segment FF{marker:02X} at byte {i - 2} runs past the end of the file")
        if marker in _SOF_MARKERS:
            if seg_len < 8:
                raise StructureError("frame header too short")
            precision = data[i + 2]
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            components = data[i + 7]
            if width == 0 or height == 0:
                raise StructureError(f"frame header gives a {width}x{height} image")
            if components not in (1, 3, 4) or seg_len != 8 + 3 * components:
                raise StructureError(f"frame header with {components} components and length {seg_len}")
            frame = JpegInfo(marker, precision, width, height, components)
        elif marker == 0xDA:
            if frame is None:
                raise StructureError("start of scan without a frame header (no SOF marker)")
            scan_start = i + seg_len
            break
        i += seg_len
    return frame, scan_start


def image_size(data: Buffer) -> tuple[int, int] | None:
    """(width, height) read from the image's header without decoding it, or None if no parser finds one.

    A JPEG's comes from its frame header (a walk of the markers, microseconds); any other format's (and a
    JPEG whose header walk fails) from Pillow's parser for the format, called without ``Image.open``'s
    decompression-bomb check so that a huge size is returned, not raised. No pixel data is read.
    """
    if sniff_format(data) == ImageFormat.JPEG:
        try:
            frame, _ = _walk_jpeg_header(data)
            return frame.width, frame.height
        except StructureError:
            pass  # Pillow's parser may still find the frame
    from PIL import Image

    Image.init()
    prefix = bytes(data[:16])
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        accepted = not accept or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str: Pillow would only warn about the format
            continue
        try:
            image = factory(io.BytesIO(data), "")
        except Exception:  # not this format, or a broken header: try the next parser
            continue
        with image:
            width, height = image.size
        return width, height
    return None


def size_problem(size: tuple[int, int], image_format: ImageFormat) -> str | None:
    """Why an image of ``size`` in ``image_format`` is too large to decode, or None."""
    width, height = size
    if image_format == ImageFormat.JPEG and max(width, height) > JPEG_MAX_SIDE:
        return (
            f"too large: {width}x{height} px, a JPEG side over {JPEG_MAX_SIDE} px (neither Pillow nor DALI decodes it)"
        )
    if width * height > PIXEL_CAP:
        return (
            f"too large: {width}x{height} px = {width * height} pixels, over the cap of {PIXEL_CAP} "
            f"(Pillow's decompression-bomb limit)"
        )
    return None


def header_check(data: Buffer) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) by ``data``'s header (``image_size``; None: no size can be read, decoding decides),
    and why that is too large to decode (None: it fits). Costs no decode: check before handing bytes to a
    decoder."""
    data = memoryview(data)  # any buffer: a DALI source's numpy array too (its slices do not compare to bytes)
    size = image_size(data)
    return size, None if size is None else size_problem(size, sniff_format(data))


def too_large(data: Buffer) -> str | None:
    """Why ``data`` is too large to decode, from its header alone (``header_check``), or None."""
    return header_check(data)[1]


def _decode(data: Buffer) -> Image.Image:
    """Fully decode with Pillow (first frame); raises on truncation or corruption."""
    from PIL import Image  # imported on first need: most files never reach Pillow

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


_BUFFER_ADDRESS = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>")


def without_addresses(text: str) -> str:
    """``text`` without the ``<_io.BytesIO object at 0x...>`` Pillow names its input by: the same text every run."""
    return _BUFFER_ADDRESS.sub("", text)


def describe_error(exc: Exception) -> str:
    """Pillow's error as one short, reproducible line for a report."""
    text = without_addresses(str(exc) or type(exc).__name__)
    return text.splitlines()[0][:200]


def _salvage(data: Buffer, why: str, reencode: Reencode) -> Verdict:
    """A file that failed the cheap checks: keep it if Pillow decodes it fully (transcoded to an RGB JPEG
    under ``reencode``'s settings: alpha dropped, as ImageFolder's ``convert('RGB')`` drops it), else skip it."""
    problem = too_large(data)
    if problem:
        return Verdict(Action.SKIP, None, ImageFormat.UNKNOWN, f"{why}; {problem}")
    try:
        payload = reencode.encode(_decode(data))
        return Verdict(Action.STORE_TRANSCODED, payload, ImageFormat.JPEG, f"{why}; decodes, transcoded")
    except Exception as exc:  # Pillow raises many types for broken files
        return Verdict(Action.SKIP, None, ImageFormat.UNKNOWN, f"{why}; Pillow: {describe_error(exc)}")


def inspect_image(
    data: Buffer, verify_decode: bool = False, keep_format: bool = False, reencode: Reencode = NONE
) -> Verdict:
    """The converter's decision for one file's bytes (any buffer; an original is returned as given).

    ``reencode`` sets how transcodes are written; whether an original is re-encoded is decided after
    (``Reencode.wanted``), so an original's verdict is the same whatever the settings."""
    if not data:
        return Verdict(Action.SKIP, None, ImageFormat.UNKNOWN, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt == ImageFormat.JPEG:
        try:
            info = parse_jpeg(data)
        except StructureError as exc:
            return _salvage(data, str(exc), reencode)
        problem = size_problem((info.width, info.height), fmt)
        if problem:
            return Verdict(Action.SKIP, None, fmt, problem)
        if info.gpu_friendly:
            if verify_decode:
                try:
                    _decode(data)
                except Exception as exc:
                    return Verdict(Action.SKIP, None, fmt, f"does not decode: {describe_error(exc)}")
            return Verdict(Action.STORE_ORIGINAL, data, fmt, size=(info.width, info.height))
        kind = {4: "CMYK/YCCK"}.get(info.components, f"{info.components}-component")
        why = f"{kind} JPEG, SOF FF{info.sof_marker:02X}, {info.precision}-bit"
        if keep_format:
            return _keep(data, fmt, verify=True, why=why)
        return _salvage(data, why, reencode)
    if fmt == ImageFormat.UNKNOWN:
        return _salvage(data, UNKNOWN_FORMAT, reencode)
    if keep_format:
        return _keep(data, fmt, verify=verify_decode, why=fmt.name)
    return _salvage(data, f"{fmt.name} image", reencode)


def _keep(data: Buffer, fmt: ImageFormat, verify: bool, why: str) -> Verdict:
    """--keep-format: store as it is once Pillow can at least parse (or, with verify, decode) it."""
    size = image_size(memoryview(data))  # too_large's check, the size kept for the verdict
    problem = None if size is None else size_problem(size, fmt)
    if problem:
        return Verdict(Action.SKIP, None, fmt, f"{why}; {problem}")
    try:
        if verify:
            _decode(data)
        else:
            from PIL import Image

            Image.open(io.BytesIO(data))
    except Exception as exc:
        return Verdict(Action.SKIP, None, fmt, f"{why}; Pillow: {describe_error(exc)}")
    return Verdict(Action.STORE_ORIGINAL, data, fmt, f"{why}, stored as it is (--keep-format)", size)
