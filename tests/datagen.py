"""Generated ImageFolder trees with the variety real photo collections have, so the suite needs no download.

Each file is drawn by Pillow from photo-like content (smooth colour fields, hard-edged shapes, texture and
sensor noise: real frequencies for decoders and resamplers, not flat colour) and saved the way cameras,
editors and scrapers save them: sizes from 1x1 to beyond 4000 px in both orientations, baseline and
progressive JPEGs, 4:4:4 / 4:2:2 / 4:2:0 chroma subsampling, grayscale, CMYK, restart markers, EXIF
orientation tags, an ICC profile, PNG / GIF / BMP / TIFF / WebP files (some misnamed ``.jpg``), a text file,
hidden files, a nested folder, names with spaces and non-ASCII characters, and an empty class folder.

Every file records what the converter must do with it (``original``: stored byte for byte, ``transcoded``:
stored as an RGB JPEG, ``skipped``), so the tests check the converter against this ground truth. Output is
the same for the same seed.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw

# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder lists (by name, case-insensitively)
IMAGEFOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

ORIGINAL, TRANSCODED, SKIPPED = "original", "transcoded", "skipped"


@dataclass(frozen=True)
class GeneratedFile:
    rel: str  # path relative to the split's root, "/" separators (as the converter records it)
    class_name: str
    outcome: str  # ORIGINAL, TRANSCODED or SKIPPED: what the converter must do with it
    what: str  # how it was saved, for messages

    @property
    def listed_by_imagefolder(self) -> bool:
        return self.rel.lower().endswith(IMAGEFOLDER_EXTENSIONS)


@dataclass(frozen=True)
class GeneratedSplit:
    """One ImageFolder tree: ``root/<class>/...``."""

    root: Path
    classes: list[str]  # every class folder, sorted, empty ones included (as ImageFolder numbers them)
    files: list[GeneratedFile] = field(default_factory=list)  # converter candidates (no hidden files)

    @property
    def stored(self) -> list[GeneratedFile]:
        return [f for f in self.files if f.outcome != SKIPPED]

    def outcome(self, what: str) -> list[GeneratedFile]:
        return [f for f in self.files if f.outcome == what]


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path
    train: GeneratedSplit
    val: GeneratedSplit


# -- content -----------------------------------------------------------------------------------------


def _field(rng: np.random.Generator, width: int, height: int, cells: int, amplitude: float) -> np.ndarray:
    """A smooth random colour field: random values on a coarse grid, upsampled bicubically."""
    gw, gh = max(2, width // cells), max(2, height // cells)
    coarse = rng.normal(0.0, amplitude, (gh, gw, 3)).astype(np.float32)
    channels = [
        Image.fromarray(coarse[..., c], "F").resize((width, height), Image.Resampling.BICUBIC) for c in range(3)
    ]
    return np.stack([np.asarray(c) for c in channels], axis=-1)


def photo(width: int, height: int, seed: int, class_index: int = 0) -> Image.Image:
    """An RGB image with a photo's mix of frequencies; its overall hue leans by class."""
    rng = np.random.default_rng(seed)
    if width * height <= 64:  # tiny: noise is all there is room for
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    # work at most ~1 MP and upsample: a 12 MP "phone photo" costs a fraction of a second
    scale = max(1.0, (width * height / 1.0e6) ** 0.5)
    w, h = max(1, int(width / scale)), max(1, int(height / scale))
    hue = np.array([np.cos(class_index * 2.1), np.cos(class_index * 2.1 + 2.1), np.cos(class_index * 2.1 + 4.2)])
    base = 120 + 40 * hue + _field(rng, w, h, 48, 45.0) + _field(rng, w, h, 8, 18.0)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # hard edges: objects against a background
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(1, max(2, w // 2))), y0 + int(rng.integers(1, max(2, h // 2)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    if scale > 1.0:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0.0, 5.0, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


# -- what to write ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str  # file name inside the class folder (may hold a subfolder)
    size: tuple[int, int]
    fmt: str = "JPEG"
    mode: str = "RGB"
    options: dict = field(default_factory=dict)
    outcome: str = ORIGINAL
    what: str = "baseline JPEG 4:2:0 q90"


def _jpeg(
    name: str, size: tuple[int, int], what: str, outcome: str = ORIGINAL, mode: str = "RGB", **options: object
) -> _Spec:
    return _Spec(name, size, "JPEG", mode, {"quality": 90, **options}, outcome, what)


def _special_train() -> dict[str, list[_Spec]]:
    """Odd files of the training tree, by class (``cicadas`` stays empty)."""
    return {
        "ants": [
            _jpeg("tiny 1x1.jpg", (1, 1), "1x1 JPEG"),
            _jpeg("odd-7x3.jpg", (7, 3), "7x3 JPEG (odd sizes under 4:2:0)"),
            _jpeg(
                "phone IMG_0001.JPG",
                (4032, 3024),
                "4032x3024 phone photo, EXIF orientation 6, q85",
                quality=85,
                exif=_exif(6),
            ),
            _jpeg("progressive.jpg", (333, 250), "progressive JPEG", progressive=True),
            _jpeg("subsampling-444.jpg", (300, 200), "baseline JPEG 4:4:4", subsampling=0),
            _jpeg("restart-markers.jpg", (320, 240), "JPEG with restart markers every 4 MCUs", restart_marker_blocks=4),
            _Spec("alpha.png", (180, 220), "PNG", "RGBA", {}, TRANSCODED, "RGBA PNG"),
            _Spec("palette.gif", (150, 100), "GIF", "P", {}, TRANSCODED, "palette GIF (ImageFolder does not list it)"),
        ],
        "bees": [
            _jpeg("abeille é ü 蜂.jpg", (240, 320), "non-ASCII name with spaces"),
            _jpeg("portrait-422.jpg", (200, 300), "portrait JPEG 4:2:2", subsampling=1),
            _jpeg("gray.jpg", (256, 192), "grayscale JPEG", mode="L"),
            _jpeg("cmyk.jpg", (160, 120), "CMYK JPEG", outcome=TRANSCODED, mode="CMYK"),
            _jpeg("icc profile.jpg", (280, 210), "JPEG with an sRGB ICC profile", icc_profile=_srgb_icc()),
            _jpeg("exif-8.jpeg", (210, 280), "JPEG with EXIF orientation 8", exif=_exif(8)),
            _jpeg("sub folder/nested.jpg", (250, 250), "JPEG in a subfolder of the class"),
            _Spec("png-named.jpg", (120, 90), "PNG", "RGB", {}, TRANSCODED, "PNG named .jpg"),
            _Spec("scan.bmp", (130, 170), "BMP", "RGB", {}, TRANSCODED, "BMP"),
        ],
        "wasps": [
            _jpeg(
                "strip 4100x300.jpg",
                (4100, 300),
                "4100x300 panorama strip, progressive 4:4:4",
                progressive=True,
                subsampling=0,
            ),
            _jpeg("exif-3.jpg", (300, 225), "JPEG with EXIF orientation 3", exif=_exif(3)),
            _Spec("scan.tif", (140, 100), "TIFF", "RGB", {"compression": "tiff_lzw"}, TRANSCODED, "LZW TIFF"),
            _Spec("web.webp", (200, 150), "WEBP", "RGB", {"quality": 80}, TRANSCODED, "WebP"),
            _Spec("webp-named.jpg", (160, 160), "WEBP", "RGB", {"quality": 80}, TRANSCODED, "WebP named .jpg"),
            _Spec("notes.txt", (0, 0), "TEXT", "", {}, SKIPPED, "a text file among the images"),
        ],
    }


def _special_val() -> dict[str, list[_Spec]]:
    return {
        "ants": [
            _jpeg("tiny 1x1.jpg", (1, 1), "1x1 JPEG"),
            _jpeg("tall 300x4100.jpg", (300, 4100), "300x4100 portrait strip"),
            _jpeg("progressive-420.jpg", (400, 300), "progressive JPEG 4:2:0", progressive=True),
            _jpeg("restart-rows.jpg", (256, 256), "JPEG with a restart marker every MCU row", restart_marker_rows=1),
        ],
        "bees": [
            _jpeg("gray.jpg", (190, 260), "grayscale JPEG", mode="L"),
            _jpeg("subsampling-444.jpg", (257, 300), "JPEG 4:4:4, odd width", subsampling=0),
            _jpeg("subsampling-422.jpg", (300, 259), "JPEG 4:2:2, odd height", subsampling=1),
            _jpeg("exif-6 ü.jpg", (240, 180), "JPEG with EXIF orientation 6, non-ASCII name", exif=_exif(6)),
        ],
        "wasps": [
            _jpeg("cmyk.jpg", (150, 150), "CMYK JPEG", outcome=TRANSCODED, mode="CMYK"),
            _Spec("png-named.jpg", (100, 150), "PNG", "RGB", {}, TRANSCODED, "PNG named .jpg"),
            _jpeg("icc.jpg", (225, 800), "tall JPEG with an ICC profile", icc_profile=_srgb_icc()),
        ],
    }


def _write(path: Path, spec: _Spec, seed: int, class_index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.fmt == "TEXT":
        path.write_text("labels were checked by hand\n", encoding="utf-8")
        return
    image = photo(*spec.size, seed=seed, class_index=class_index)
    if spec.mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(image.size)
        image.putalpha(alpha)
    elif spec.mode == "P":
        image = image.quantize(64)
    elif spec.mode != "RGB":
        image = image.convert(spec.mode)
    path.write_bytes(_encode(image, spec.fmt, **spec.options))


def _make_split(
    root: Path, classes: list[str], per_class: dict[str, int], specials: dict[str, list[_Spec]], seed: int
) -> GeneratedSplit:
    rng = np.random.default_rng(seed)
    files: list[GeneratedFile] = []
    for class_index, name in enumerate(classes):
        class_dir = root / name
        class_dir.mkdir(parents=True, exist_ok=True)
        specs = list(specials.get(name, []))
        for i in range(per_class.get(name, 0)):
            width, height = int(rng.integers(160, 420)), int(rng.integers(160, 420))
            specs.append(_jpeg(f"img_{i:03d}.jpg", (width, height), "baseline JPEG 4:2:0 q90"))
        for spec in specs:
            _write(class_dir / spec.name, spec, int(rng.integers(1 << 31)), class_index)
            files.append(GeneratedFile(f"{name}/{spec.name}", name, spec.outcome, spec.what))
    # hidden files are not candidates for the converter; ImageFolder does list "._tiny 1x1.jpg" (by extension),
    # a macOS resource fork that its loader cannot open: one reason to convert rather than read the tree
    (root / classes[0] / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (root / classes[0] / "._tiny 1x1.jpg").write_bytes(b"\0\5\26\7" + bytes(60))
    return GeneratedSplit(root=root, classes=sorted(classes), files=_imagefolder_order(root, classes, files))


def _imagefolder_order(root: Path, classes: list[str], files: list[GeneratedFile]) -> list[GeneratedFile]:
    """Files in the order ImageFolder (and the converter) list them: class, then sorted os.walk."""
    by_rel = {f.rel: f for f in files}
    ordered: list[GeneratedFile] = []
    for name in sorted(classes):
        for dirpath, dirnames, filenames in sorted(os.walk(root / name)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fname in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, fname), root).replace(os.sep, "/")
                if rel in by_rel:
                    ordered.append(by_rel[rel])
    assert len(ordered) == len(files), "generated files and the tree disagree"
    return ordered


def make_dataset(root: Path, seed: int = 0, train_per_class: int = 24, val_per_class: int = 12) -> GeneratedDataset:
    """``root/train`` (classes ants, bees, cicadas (empty), wasps) and ``root/val`` (ants, bees, wasps)."""
    train = _make_split(
        root / "train",
        ["ants", "bees", "cicadas", "wasps"],
        {"ants": train_per_class, "bees": train_per_class, "wasps": train_per_class // 2},
        _special_train(),
        seed,
    )
    val = _make_split(
        root / "val",
        ["ants", "bees", "wasps"],
        {"ants": val_per_class, "bees": val_per_class, "wasps": val_per_class // 2},
        _special_val(),
        seed + 1,
    )
    return GeneratedDataset(root=root, train=train, val=val)


def chroma_stress_jpegs(count: int = 8, size: int = 256, seed: int = 0) -> list[bytes]:
    """Saturated colour stripes and checks, JPEG 4:2:0: where decoders' chroma upsampling shows.

    The short side is the validation resize (256), so no resampling hides a decoder's differences.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        period = int(rng.integers(2, 7))
        yy, xx = np.mgrid[0:size, 0 : size + 17 * i]
        pattern = ((xx // period + (yy // period) * (i % 2)) % 2).astype(bool)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        pixels = np.where(pattern[..., None], a, b).astype(np.uint8)
        out.append(_encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=95, subsampling=2))
    return out


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid, small (a few dozen KB) black 1-bit PNG whose header claims ``width`` x ``height`` pixels: a
    decompression bomb (20000 x 20000 decodes to 1.2 GB of RGB), built without ever holding its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits, all black
    packer = zlib.compressobj(9)
    rows_per_piece = max(1, (1 << 20) // len(row))
    idat = b"".join(packer.compress(row * min(rows_per_piece, height - y)) for y in range(0, height, rows_per_piece))
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
