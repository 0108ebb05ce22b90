"""The converter's per-file verdict on byte-level cases: JPEG header parsing, the end-of-image search, sniffing.

Every case is built here from a small valid JPEG that Pillow writes, split into its marker segments and
mutated, so each test names exactly the defect it holds.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from datagen import huge_png
from PIL import Image

from lmdb_io.imagecheck import (
    EOI_SEARCH_BYTES,
    UNIDENTIFIED,
    Action,
    JpegInfo,
    StructureError,
    Verdict,
    inspect_image,
    parse_jpeg,
    sniff_format,
)
from lmdb_io.record import ImageFormat

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
SOF0, SOF1, SOS, DHT, DQT, APP0 = 0xC0, 0xC1, 0xDA, 0xC4, 0xDB, 0xE0
WIDTH, HEIGHT = 24, 16


def _image(mode: str = "RGB", size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def _encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _jpeg(mode: str = "RGB", **options: object) -> bytes:
    return _encode(_image(mode), "JPEG", quality=90, **options)


Segments = list[tuple[int, bytes]]


def _split(data: bytes) -> tuple[Segments, bytes]:
    """(marker, body) of each header segment after SOI, and the rest from the SOS marker on."""
    assert data[:2] == SOI
    i, segments = 2, []
    while True:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == SOS:
            return segments, data[i:]
        segments.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _build(segments: Segments, scan: bytes, between: dict[int, bytes] | None = None) -> bytes:
    """SOI, the segments (``between[i]`` put before segment ``i``), then ``scan``."""
    between = between or {}
    return SOI + b"".join(between.get(i, b"") + _segment(m, body) for i, (m, body) in enumerate(segments)) + scan


BASE = _jpeg()
SEGMENTS, SCAN = _split(BASE)
SOF_INDEX = next(i for i, (m, _) in enumerate(SEGMENTS) if m == SOF0)
SOF_BODY = SEGMENTS[SOF_INDEX][1]  # precision, height (2), width (2), components, 3 bytes per component


def _with_sof(body: bytes, marker: int = SOF0) -> bytes:
    segments = list(SEGMENTS)
    segments[SOF_INDEX] = (marker, body)
    return _build(segments, SCAN)


def _verdict(data: bytes, **options: bool) -> Verdict:
    verdict = inspect_image(data, **options)
    assert verdict.action in (Action.STORE_ORIGINAL, Action.STORE_TRANSCODED, Action.SKIP)
    return verdict


def test_the_base_jpeg_is_plain() -> None:
    assert [m for m, _ in SEGMENTS] == [APP0, DQT, DQT, SOF0, DHT, DHT, DHT, DHT]  # what the cases mutate
    info = parse_jpeg(BASE)
    assert info == JpegInfo(SOF0, 8, WIDTH, HEIGHT, 3) and info.gpu_friendly
    verdict = _verdict(BASE)
    assert verdict == Verdict(Action.STORE_ORIGINAL, BASE, ImageFormat.JPEG, "", (WIDTH, HEIGHT))
    assert verdict.payload is BASE  # stored as given, no copy
    view = memoryview(bytearray(BASE))  # what the converter passes
    assert _verdict(view).payload is view


# -- accepted: stored byte for byte -----------------------------------------------------------------

ACCEPTED: dict[str, Callable[[], bytes]] = {
    "fill bytes before the first marker": lambda: SOI + b"\xff\xff\xff" + BASE[2:],
    "fill bytes before SOF": lambda: _build(SEGMENTS, SCAN, {SOF_INDEX: b"\xff\xff"}),
    "fill bytes before SOS": lambda: _build(SEGMENTS, b"\xff" + SCAN),
    "APPn and COM segments before SOF": lambda: _build(
        [SEGMENTS[0], (0xE1, b"Exif\0\0" + bytes(20)), (0xEF, b"junk" * 10), (0xFE, b"a comment")] + SEGMENTS[1:],
        SCAN,
    ),
    "DRI segment (restart markers in the scan)": lambda: _jpeg(restart_marker_blocks=1),
    "progressive (SOF2)": lambda: _jpeg(progressive=True),
    "grayscale (1 component)": lambda: _jpeg("L"),
    "4:4:4 subsampling": lambda: _jpeg(subsampling=0),
    "EOI followed by trailing garbage within the last KB": lambda: BASE + bytes(range(256)) * 3,
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted(case: str) -> None:
    data = ACCEPTED[case]()
    info = parse_jpeg(data)
    assert info.gpu_friendly and (info.width, info.height) == (WIDTH, HEIGHT)
    assert _verdict(data) == Verdict(Action.STORE_ORIGINAL, data, ImageFormat.JPEG, "", (WIDTH, HEIGHT))
    assert _verdict(data, verify_decode=True).action == Action.STORE_ORIGINAL  # and Pillow decodes it


def test_dri_case_holds_a_dri_segment() -> None:
    assert 0xDD in [m for m, _ in _split(ACCEPTED["DRI segment (restart markers in the scan)"]())[0]]


def test_accepted_cases_decode_with_dali() -> None:
    """What is stored untouched must decode with DALI's CPU decoder too (the training loader's)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    payloads = [np.frombuffer(make(), dtype=np.uint8) for make in ACCEPTED.values()]

    @pipeline_def(batch_size=len(payloads), num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
    def decode():  # a DALI graph
        return fn.decoders.image(fn.external_source(name="encoded", dtype=types.UINT8), device="cpu")

    pipe = decode()
    pipe.build()
    pipe.feed_input("encoded", payloads)
    (images,) = pipe.run()
    assert [tuple(images.at(i).shape) for i in range(len(payloads))] == [(HEIGHT, WIDTH, 3)] * len(payloads)


def test_tem_marker_in_the_header_is_not_stored_untouched() -> None:
    data = _build(SEGMENTS, SCAN, {1: b"\xff\x01"})
    assert _verdict(data, verify_decode=True).action == Action.SKIP  # Pillow cannot open it
    verdict = _verdict(data)
    assert verdict.action == Action.SKIP and "Pillow" in verdict.reason


def test_rst_marker_in_the_header_is_transcoded() -> None:
    data = _build(SEGMENTS, SCAN, {SOF_INDEX: b"\xff\xd0", SOF_INDEX + 1: b"\xff\xd7"})
    assert _verdict(data, verify_decode=True).action != Action.SKIP  # Pillow decodes it
    verdict = _verdict(data)
    assert verdict.action == Action.STORE_TRANSCODED


# -- too large: skipped with the reason, before any decode ------------------------------------------

# Pillow raises DecompressionBombError above twice its MAX_IMAGE_PIXELS (and DALI's decoders would allocate
# the frame), libjpeg refuses a JPEG side over 65500 px
PILLOW_ERROR_PIXELS = 2 * int(Image.MAX_IMAGE_PIXELS or 0)


def _sized_jpeg(width: int, height: int, marker: int = SOF0, precision: int = 8) -> bytes:
    """The base JPEG with a frame header claiming ``width`` x ``height`` (the scan stays the small one)."""
    body = bytes([precision]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + SOF_BODY[5:]
    return _with_sof(body, marker)


TOO_LARGE: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "JPEG 65535x65535": (lambda: _sized_jpeg(65535, 65535), ("65535x65535", "65500")),
    "JPEG 65501 px wide": (lambda: _sized_jpeg(65501, HEIGHT), (f"65501x{HEIGHT}", "65500")),
    "JPEG 65501 px high": (lambda: _sized_jpeg(WIDTH, 65501), (f"{WIDTH}x65501", "65500")),
    "JPEG over the pixel cap": (lambda: _sized_jpeg(20000, 10000), ("20000x10000", str(PILLOW_ERROR_PIXELS))),
    "12-bit JPEG 65535x65535 (would be transcoded)": (
        lambda: _sized_jpeg(65535, 65535, SOF1, 12),
        ("65535x65535", "65500"),
    ),
    "PNG 20000x20000": (huge_png, ("20000x20000", str(PILLOW_ERROR_PIXELS))),
}


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every full decode (the converter's and Pillow's own), which then fails."""
    from PIL import ImageFile

    from lmdb_io import imagecheck

    decoded: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        decoded.append(repr(args)[:80])
        raise RuntimeError("decoded")

    monkeypatch.setattr(imagecheck, "_decode", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    return decoded


@pytest.mark.parametrize(
    "options", [{}, {"verify_decode": True}, {"keep_format": True}], ids=["default", "verify", "keep"]
)
@pytest.mark.parametrize("case", TOO_LARGE)
def test_too_large_is_skipped_before_decoding(case: str, options: dict[str, bool], no_decode: list[str]) -> None:
    make, fragments = TOO_LARGE[case]
    verdict = _verdict(make(), **options)
    assert verdict.action == Action.SKIP and verdict.payload is None, verdict
    for fragment in ("too large", *fragments):
        assert fragment in verdict.reason, verdict.reason
    assert no_decode == []


@pytest.mark.parametrize("size", [(65500, HEIGHT), (WIDTH, 65500), (13000, 13000)])
def test_largest_accepted_jpeg_frames_are_stored(size: tuple[int, int], no_decode: list[str]) -> None:
    """At the limits (a side of 65500 px; fewer pixels than Pillow refuses) the cheap checks still pass."""
    data = _sized_jpeg(*size)
    assert _verdict(data) == Verdict(Action.STORE_ORIGINAL, data, ImageFormat.JPEG, "", size)


# -- refused by the cheap checks, then salvaged by Pillow or skipped --------------------------------

# ``structure``: what parse_jpeg raises (None: it parses); ``action`` and ``reason``: the converter's verdict
REFUSED: dict[str, tuple[Callable[[], bytes], str | None, str, tuple[str, ...]]] = {
    "SOF with width 0": (
        lambda: _with_sof(SOF_BODY[:3] + b"\0\0" + SOF_BODY[5:]),
        f"frame header gives a 0x{HEIGHT} image",
        Action.SKIP,
        (f"0x{HEIGHT} image", "Pillow: cannot identify"),
    ),
    "SOF with height 0": (
        lambda: _with_sof(SOF_BODY[:1] + b"\0\0" + SOF_BODY[3:]),
        f"frame header gives a {WIDTH}x0 image",
        Action.SKIP,
        (f"{WIDTH}x0 image",),
    ),
    "SOF length one byte too long": (
        lambda: _with_sof(SOF_BODY + b"\0"),
        "frame header with 3 components and length 18",
        Action.SKIP,
        ("length 18",),
    ),
    "SOF too short for a frame header": (
        lambda: _with_sof(SOF_BODY[:4]),
        "frame header too short",
        Action.SKIP,
        ("frame header too short",),
    ),
    "SOF with 2 components": (
        lambda: _with_sof(SOF_BODY[:5] + b"\x02" + SOF_BODY[6:12]),
        "frame header with 2 components",
        Action.SKIP,
        ("2 components",),
    ),
    "12-bit precision (SOF1)": (
        lambda: _with_sof(b"\x0c" + SOF_BODY[1:], marker=SOF1),
        None,
        Action.SKIP,
        ("SOF FFC1", "12-bit", "Pillow"),
    ),
    "SOS before any SOF": (
        lambda: _build([s for s in SEGMENTS if s[0] != SOF0], SCAN),
        "start of scan without a frame header (no SOF marker)",
        Action.SKIP,
        ("no SOF marker",),
    ),
    "EOI before SOS": (
        lambda: _build(SEGMENTS, EOI),
        "end-of-image marker before any image data",
        Action.SKIP,
        ("end-of-image marker before any image data",),
    ),
    "second SOI in the header": (
        lambda: SOI + BASE,
        "second start-of-image marker inside the header",
        Action.SKIP,
        ("second start-of-image",),
    ),
    "file ends inside a segment length": (
        lambda: SOI + b"\xff\xe0\x00",
        "file ends inside a segment length (truncated header)",
        Action.SKIP,
        ("segment length",),
    ),
    "segment runs past the end": (
        lambda: SOI + b"\xff\xe0\x00\xff" + bytes(10),
        "segment FFE0 at byte 2 runs past the end of the file",
        Action.SKIP,
        ("FFE0", "past the end"),
    ),
    "file ends inside a marker": (
        lambda: SOI + b"\xff\xff",
        "file ends inside a marker (truncated header)",
        Action.SKIP,
        ("inside a marker",),
    ),
    "file ends before SOS": (
        lambda: _build(SEGMENTS, b""),
        "file ends before the start of scan (truncated header)",
        Action.SKIP,
        ("before the start of scan",),
    ),
    "no marker where one is due": (
        lambda: _build(SEGMENTS[:1], b"\x00" + _build(SEGMENTS[1:], SCAN)[2:]),
        f"corrupt JPEG header: expected a marker at byte {4 + len(SEGMENTS[0][1]) + 2}",
        Action.STORE_TRANSCODED,  # Pillow (libjpeg) skips the stray byte: salvaged
        ("expected a marker", "decodes, transcoded"),
    ),
    "missing EOI (truncated by 2 bytes)": (
        lambda: BASE[:-2],
        "no JPEG end-of-image marker (truncated file)",
        Action.SKIP,
        ("no JPEG end-of-image marker", "Pillow: image file is truncated"),
    ),
    "truncated in the middle of the scan": (
        lambda: BASE[: len(BASE) - len(SCAN) // 2],
        "no JPEG end-of-image marker (truncated file)",
        Action.SKIP,
        ("no JPEG end-of-image marker", "truncated"),
    ),
    "trailing garbage longer than the EOI search": (
        lambda: BASE + bytes(EOI_SEARCH_BYTES + 500),
        "no JPEG end-of-image marker (truncated file)",
        Action.STORE_TRANSCODED,
        ("no JPEG end-of-image marker", "decodes, transcoded"),
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused(case: str) -> None:
    make, structure, action, fragments = REFUSED[case]
    data = make()
    assert sniff_format(data) == ImageFormat.JPEG
    if structure is None:
        assert not parse_jpeg(data).gpu_friendly
    else:
        with pytest.raises(StructureError) as raised:
            parse_jpeg(data)
        assert str(raised.value).startswith(structure), str(raised.value)
    verdict = _verdict(data)
    assert verdict.action == action, verdict
    for fragment in fragments:
        assert fragment in verdict.reason, verdict.reason
    if action == Action.SKIP:
        assert verdict.payload is None and verdict.image_format == ImageFormat.UNKNOWN
    else:
        _assert_rgb_jpeg(verdict, (WIDTH, HEIGHT))


def _assert_rgb_jpeg(verdict: Verdict, size: tuple[int, int]) -> None:
    assert verdict.image_format == ImageFormat.JPEG and verdict.payload is not None
    payload = bytes(verdict.payload)
    assert parse_jpeg(payload).gpu_friendly
    with Image.open(io.BytesIO(payload)) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == size


def test_eoi_search_boundary() -> None:
    """An EOI whose last byte is among the final EOI_SEARCH_BYTES counts; one byte further it does not."""
    inside = BASE + bytes(EOI_SEARCH_BYTES - 2)
    assert _verdict(inside).action == Action.STORE_ORIGINAL
    outside = BASE + bytes(EOI_SEARCH_BYTES - 1)
    assert _verdict(outside).action == Action.STORE_TRANSCODED


def test_empty_input() -> None:
    assert sniff_format(b"") == ImageFormat.UNKNOWN
    with pytest.raises(StructureError, match="no JPEG start-of-image marker"):
        parse_jpeg(b"")
    assert _verdict(b"") == Verdict(Action.SKIP, None, ImageFormat.UNKNOWN, "empty file (0 bytes)")


def test_cmyk_jpeg_is_transcoded_or_kept() -> None:
    data = _jpeg("CMYK")
    info = parse_jpeg(data)
    assert info.components == 4 and not info.gpu_friendly
    verdict = _verdict(data)
    assert verdict.action == Action.STORE_TRANSCODED and verdict.reason.startswith("CMYK/YCCK JPEG, SOF FFC0, 8-bit")
    _assert_rgb_jpeg(verdict, (WIDTH, HEIGHT))
    kept = _verdict(data, keep_format=True)
    assert kept.action == Action.STORE_ORIGINAL and kept.payload is data and "--keep-format" in kept.reason


# A real arithmetic-coded JPEG (SOF9 and a DAC segment), 8x8 grayscale: ``jpegtran -arithmetic`` of a
# Pillow JPEG (Pillow cannot write arithmetic coding). GPU decoders do not take it; Pillow decodes it.
ARITHMETIC_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a181616183123"
    "251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c656763ffc9000b080008"
    "000801011100ffcc000600101005ffda0008010100003f00ce99b40322186fd9aaa3ce8e83598c8f284e5af43c25c7dc"
    "bd48e47cb6bb205a18ffd9"
)


def test_arithmetic_coded_jpeg_is_transcoded() -> None:
    info = parse_jpeg(ARITHMETIC_JPEG)
    assert info == JpegInfo(0xC9, 8, 8, 8, 1) and not info.gpu_friendly
    verdict = _verdict(ARITHMETIC_JPEG)
    assert verdict.action == Action.STORE_TRANSCODED
    assert verdict.reason == "1-component JPEG, SOF FFC9, 8-bit; decodes, transcoded"
    _assert_rgb_jpeg(verdict, (8, 8))


def test_verify_decode_catches_what_the_structure_misses() -> None:
    """Half the scan cut out and an EOI put back: structurally whole, so only decoding can tell."""
    big = _encode(_image(size=(256, 256)), "JPEG", quality=90)
    scan = _split(big)[1]
    data = big[: len(big) - len(scan) // 2] + EOI
    assert _verdict(data).action == Action.STORE_ORIGINAL
    # Pillow (libjpeg) fills the missing rows without an error: this much is accepted even when verified
    assert _verdict(data, verify_decode=True).action == Action.STORE_ORIGINAL
    corrupt = SOI + b"\xff\xe0\x00\x10" + bytes(14) + SCAN  # an APP0 but no tables or frame
    assert _verdict(corrupt, verify_decode=True).action == Action.SKIP


# -- sniffing ---------------------------------------------------------------------------------------

PNM = {f"P{n}": f"P{n}\n1 1\n".encode() + (b"1\n" if n in (1, 2, 3) else b"\x00\x00\x00") for n in range(1, 7)}
SNIFFED: dict[str, tuple[bytes, ImageFormat]] = {
    "JPEG": (BASE, ImageFormat.JPEG),
    "PNG": (_encode(_image(), "PNG"), ImageFormat.PNG),
    "GIF87a": (_encode(_image(), "GIF"), ImageFormat.GIF),
    "GIF89a": (_encode(_image(), "GIF", comment=b"a comment needs GIF89a"), ImageFormat.GIF),
    "BMP": (_encode(_image(), "BMP"), ImageFormat.BMP),
    "WebP": (_encode(_image(), "WEBP"), ImageFormat.WEBP),
    "TIFF II": (_encode(_image(), "TIFF"), ImageFormat.TIFF),
    "TIFF MM": (b"MM\x00*" + bytes(20), ImageFormat.TIFF),
    **{name: (data, ImageFormat.PNM) for name, data in PNM.items()},
    "P7 (PAM)": (b"P7\nWIDTH 1\n", ImageFormat.UNKNOWN),
    "P1 without a byte after": (b"P1", ImageFormat.UNKNOWN),
    "RIFF but WAVE": (b"RIFF\x24\x00\x00\x00WAVEfmt ", ImageFormat.UNKNOWN),
    "SOI without a marker after": (SOI + b"\x00\x00", ImageFormat.UNKNOWN),
    "text": (b"labels were checked by hand\n", ImageFormat.UNKNOWN),
}


@pytest.mark.parametrize("case", SNIFFED)
def test_sniff_format(case: str) -> None:
    data, expected = SNIFFED[case]
    assert sniff_format(data) == expected
    assert sniff_format(memoryview(bytearray(data))) == expected  # the converter passes views


def test_sniffed_cases_hold_the_magic_they_claim() -> None:
    for name in ("GIF87a", "GIF89a", "P1", "P6"):
        assert SNIFFED[name][0].startswith(name.encode()), name
    assert SNIFFED["TIFF II"][0][:4] == b"II*\x00"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_other_formats_are_transcoded_or_kept(fmt: str) -> None:
    data = _encode(_image(), fmt)
    expected = ImageFormat.PNM if fmt == "PPM" else ImageFormat[fmt]
    verdict = _verdict(data)
    assert verdict.action == Action.STORE_TRANSCODED and verdict.reason == f"{expected.name} image; decodes, transcoded"
    _assert_rgb_jpeg(verdict, (WIDTH, HEIGHT))
    kept = _verdict(data, keep_format=True)
    assert kept.action == Action.STORE_ORIGINAL and kept.image_format == expected and kept.payload is data


def test_unknown_bytes_are_skipped_with_the_reason() -> None:
    verdict = _verdict(b"labels were checked by hand\n")
    assert verdict.action == Action.SKIP and verdict.reason.startswith("not a known image format by its magic bytes")
    assert "Pillow: cannot identify image file" in verdict.reason and "0x" not in verdict.reason  # no address
    assert verdict.reason == UNIDENTIFIED  # what the converter says of such a file it skips unread
