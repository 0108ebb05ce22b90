"""DALI validation geometry vs torchvision Resize(256) + CenterCrop(224) (PIL path).

ImageFolder decodes with PIL and ``.convert('RGB')`` and ignores EXIF
orientation; the DALI graph (``dali_pipeline.val_geometry``) must land on the
same pixel grid, so the per-image mean absolute difference of the uint8 crops
stays within 3/255 of the range (decoder and resampler rounding only).
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402 (after the pytest.importorskip lines)
from PIL import Image  # noqa: E402 (after the pytest.importorskip lines)

from dali_pipeline.compat import no_exif_rotation  # noqa: E402 (after the pytest.importorskip lines)
from dali_pipeline.val_geometry import resize_and_center_crop  # noqa: E402 (after the pytest.importorskip lines)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HYMENOPTERA_VAL = DATASETS / "hymenoptera" / "val"
BAD_IMAGES = DATASETS / "bad-images"

MAX_MEAN_ABS_DIFF = 3.0  # per image, uint8 scale
BATCH = 16


def _rgb_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _samples() -> list[tuple[str, bytes]]:
    if not HYMENOPTERA_VAL.is_dir() or not BAD_IMAGES.is_dir():
        raise RuntimeError(f"test data missing under {DATASETS}")
    out = [(str(p.relative_to(DATASETS)), p.read_bytes()) for p in sorted(HYMENOPTERA_VAL.glob("*/*")) if p.is_file()]
    for name in ("hopper_orientation_6.jpg", "hopper_gray.jpg"):
        out.append((f"bad-images/{name}", (BAD_IMAGES / name).read_bytes()))
    # the converter stores CMYK JPEGs transcoded to RGB JPEG (quality 95)
    with Image.open(BAD_IMAGES / "pil_sample_cmyk.jpg") as im:
        out.append(("bad-images/pil_sample_cmyk.jpg (as RGB JPEG)", _rgb_jpeg(im)))
    return out


def _dali_crops(blobs: list[bytes], resize: int, crop: int) -> list[np.ndarray]:
    feed = (np.frombuffer(b, np.uint8) for b in itertools.cycle(blobs))

    @pipeline_def(batch_size=BATCH, num_threads=2, device_id=None)
    def pipe():
        enc = fn.external_source(source=lambda: next(feed), batch=False)
        img = fn.decoders.image(enc, device="cpu", output_type=types.RGB, **no_exif_rotation("decoders__Image"))
        return resize_and_center_crop(img, enc, resize=resize, crop=crop, device="cpu")

    p = pipe()
    p.build()
    outs: list[np.ndarray] = []
    while len(outs) < len(blobs):
        (batch,) = p.run()
        outs.extend(np.array(batch[i]) for i in range(len(batch)))
    del p
    return outs[: len(blobs)]


def _torchvision_crops(blobs: list[bytes], resize: int, crop: int) -> list[np.ndarray]:
    tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.PILToTensor()])
    out = []
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            out.append(tf(im.convert("RGB")).permute(1, 2, 0).numpy())
    return out


def _compare(names, blobs, resize, crop):
    got = _dali_crops(blobs, resize, crop)
    want = _torchvision_crops(blobs, resize, crop)
    diffs, bad = [], []
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == np.uint8
        assert g.shape == w.shape == (crop, crop, 3), f"{name}: DALI {g.shape} vs torchvision {w.shape}"
        d = float(np.abs(g.astype(np.int16) - w.astype(np.int16)).mean())
        diffs.append(d)
        if d > MAX_MEAN_ABS_DIFF:
            bad.append((name, round(d, 3)))
    worst = int(np.argmax(diffs))
    print(
        f"\nresize={resize} crop={crop}: {len(diffs)} images, per-image mean|diff| "
        f"max={max(diffs):.4f} ({names[worst]}), mean={float(np.mean(diffs)):.4f}"
    )
    assert not bad, f"{len(bad)} images over {MAX_MEAN_ABS_DIFF}: {bad}"


def test_val_geometry_matches_torchvision():
    samples = _samples()
    assert len(samples) == 156  # 153 hymenoptera val JPEGs + 3 bad-images
    names, blobs = zip(*samples, strict=True)
    _compare(list(names), list(blobs), resize=256, crop=224)


def _synthetic(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(w + h - 2, 1)], -1) * 200
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return _rgb_jpeg(Image.fromarray(arr))


@pytest.mark.parametrize("resize,crop", [(256, 224), (128, 224), (200, 224)])
def test_val_geometry_edge_sizes(resize, crop):
    """Short side already at the target (torchvision skips the resize), odd
    margins (half-to-even anchor), and crops larger than the resized image
    (torchvision pads with zeros)."""
    sizes = [(256, 256), (256, 341), (383, 256), (257, 300), (300, 259), (100, 150), (150, 90), (225, 800)]
    names = [f"synthetic {w}x{h}" for w, h in sizes]
    blobs = [_synthetic(w, h, i) for i, (w, h) in enumerate(sizes)]
    _compare(names, blobs, resize=resize, crop=crop)
