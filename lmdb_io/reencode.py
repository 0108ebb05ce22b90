"""Storing images smaller (``--max-size``) and/or at a chosen JPEG quality (``--quality``): FFCV's speed settings.

A loader's cost per image is mostly decoding, which grows with the stored pixels and bytes: FFCV's ImageNet
recipe caps the longer side (``max_resolution``) and re-encodes at quality 90, and its lead over a loader
reading untouched originals is exactly that. The converter offers the same, off by default (a database
stores each file's bytes untouched).

- ``max_size`` alone: an image whose longer side is over ``max_size`` is decoded, downscaled (aspect ratio
  kept, longer side exactly ``max_size``) and stored as an RGB JPEG at ``DEFAULT_QUALITY``; smaller ones
  keep their original bytes.
- ``quality``: every image is re-encoded, as an RGB JPEG at that quality (downscaled too with ``max_size``).
- Files the converter transcodes anyway (PNG, CMYK JPEG, files only Pillow decodes) are transcoded under
  the same settings, in one step. ``--keep-format`` keeps an image's bytes only while it needs no
  re-encode, so it goes with ``max_size`` alone (see ``check``).

The downscale is area averaging, as FFCV's (OpenCV's ``INTER_AREA``): Pillow's ``BOX`` filter, which for
any factor averages each output pixel's footprint exactly, anti-aliased. A JPEG over ``DRAFT_GAP`` times
the target is first decoded at a reduced DCT scale (``draft``, itself an averaging), no smaller than that.
Measured on hymenoptera (500x375 JPEGs to 256 px, one thread): 2.6 ms an image against 4.9 ms with
Lanczos, the same stored bytes within 0.3%; the decode (1.7 ms) is most of what is left.

EXIF orientation is ignored (not applied, not kept), as ImageFolder's loader and this project's DALI decoders
ignore it; colour profiles are dropped as transcodes drop them. The work runs in the converter's worker
threads: Pillow releases the GIL while it decodes, resizes and encodes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConvertError

if TYPE_CHECKING:
    from PIL import Image

    from .record import Buffer

DEFAULT_QUALITY = 95  # transcodes, and re-encodes without --quality (Pillow advises against more)
MIN_MAX_SIZE = 16
JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION: Pillow and DALI refuse a JPEG with a longer side
MAX_MAX_SIZE = JPEG_MAX_SIDE  # a cap above the longest side a JPEG can have changes nothing
DRAFT_GAP = 2  # a JPEG is DCT-decoded at no less than this many times the target size


@dataclass(frozen=True)
class Reencode:
    """The converter's re-encoding settings; the default (both None) stores files untouched."""

    max_size: int | None = None
    quality: int | None = None

    @property
    def active(self) -> bool:
        return self.max_size is not None or self.quality is not None

    @property
    def jpeg_quality(self) -> int:
        """The quality every JPEG the converter writes is saved at."""
        return DEFAULT_QUALITY if self.quality is None else self.quality

    def check(self, keep_format: bool = False) -> None:
        """Refuse values no conversion should run with (ConvertError naming the flag)."""
        if self.max_size is not None and not MIN_MAX_SIZE <= self.max_size <= MAX_MAX_SIZE:
            raise ConvertError(
                f"--max-size {self.max_size}: the longest side to store must be {MIN_MAX_SIZE} to {MAX_MAX_SIZE} px"
            )
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ConvertError(f"--quality {self.quality}: a JPEG quality is 1 to 100 (95 or less advised)")
        if keep_format and self.quality is not None:
            raise ConvertError(
                "--keep-format cannot go with --quality: --quality re-encodes every image as an RGB JPEG"
            )

    def wanted(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` (width, height) that could be stored as it is gets re-encoded."""
        return self.quality is not None or (self.max_size is not None and max(size) > self.max_size)

    def target(self, size: tuple[int, int]) -> tuple[int, int]:
        """``size`` scaled so its longer side is ``max_size`` (rounded, at least 1 px); unchanged if within."""
        width, height = size
        longer = max(width, height)
        if self.max_size is None or longer <= self.max_size:
            return size
        scale = self.max_size / longer
        if width >= height:
            return self.max_size, max(1, round(height * scale))
        return max(1, round(width * scale)), self.max_size

    def encode(self, image: Image.Image) -> bytes:
        """``image`` (opened, decoded or not) as an RGB JPEG within ``max_size`` at ``jpeg_quality``."""
        from PIL import Image

        target = self.target(image.size)
        if target != image.size:
            # a JPEG not yet decoded is decoded at a reduced DCT scale, still DRAFT_GAP x the target
            image.draft(None, (target[0] * DRAFT_GAP, target[1] * DRAFT_GAP))
        if image.mode != "RGB":
            image = image.convert("RGB")  # alpha dropped, as ImageFolder's convert('RGB') drops it
        if target != image.size:
            image = image.resize(target, Image.Resampling.BOX)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=self.jpeg_quality)
        return out.getvalue()

    def reencode(self, data: Buffer) -> bytes:
        """An encoded image's bytes re-encoded (Pillow's exceptions propagate for a file it cannot decode)."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return self.encode(image)

    def to_meta(self) -> dict[str, Any]:
        """The settings as ``__meta__`` records them (None: not set)."""
        return {"max_size": self.max_size, "quality": self.quality}

    def flags(self) -> str:
        """The settings as the converter's flags (empty when none is set)."""
        parts = [f"--max-size {self.max_size}"] if self.max_size is not None else []
        parts += [f"--quality {self.quality}"] if self.quality is not None else []
        return " ".join(parts)

    def describe(self) -> str:
        """The settings in words, for ``lmdb-io info``."""
        if not self.active:
            return "each file's bytes untouched (no --max-size, no --quality)"
        if self.quality is None:
            what = (
                f"images over {self.max_size} px downscaled to it, as RGB JPEG q{self.jpeg_quality}; "
                "smaller ones untouched"
            )
        else:
            what = f"every image re-encoded as RGB JPEG q{self.quality}"
            what += f", those over {self.max_size} px downscaled to it" if self.max_size is not None else ""
        return f"{self.flags()}: {what}"


NONE = Reencode()


def from_meta(meta: dict[str, Any]) -> Reencode:
    """The settings a database was converted with, from its ``__meta__`` (none for databases made before
    they existed)."""
    options = meta.get("options")
    if not isinstance(options, dict):
        return NONE
    max_size, quality = options.get("max_size"), options.get("quality")
    return Reencode(
        max_size if isinstance(max_size, int) else None,
        quality if isinstance(quality, int) else None,
    )
