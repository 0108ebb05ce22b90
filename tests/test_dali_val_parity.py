"""DALI validation geometry (``dali_pipeline.val_geometry.resize_and_center_crop``) vs torchvision's
``Resize(resize)`` + ``CenterCrop(crop)`` (PIL path), on encoded bytes, outside any loader.

ImageFolder decodes with PIL and ``.convert('RGB')`` and ignores EXIF orientation; the DALI graph must land
on the same pixel grid, so the per-image mean absolute difference of the uint8 crops stays within 3/255
(decoder and resampler rounding only). The edge cases: the short side already at the target (torchvision
skips the resize), odd margins (Python's half-to-even crop anchor), crops larger than the resized image
(torchvision pads with zeros), 1x1 images and 4100 px strips. The loaders' parity over a database is
``test_loaders.py::test_val_parity_between_dali_cpu_and_torchvision``; real photos are in the real-data tier.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install '.[cuda130]' or '.[cuda120]')")

from nvidia.dali import fn, pipeline_def, types

from dali_pipeline.compat import no_exif_rotation
from dali_pipeline.val_geometry import resize_and_center_crop

MAX_MEAN_ABS_DIFF = 3.0  # per image, uint8 scale
BATCH = 16

# (width, height): square at the target, odd margins on either axis, smaller than the crop, 1x1, tiny odd
# sizes, and strips far longer than they are wide
EDGE_SIZES = [
    (256, 256),
    (256, 341),
    (383, 256),
    (257, 300),
    (300, 259),
    (100, 150),
    (150, 90),
    (225, 800),
    (1, 1),
    (7, 3),
    (3, 7),
    (300, 4100),
    (4100, 300),
]


def _rgb_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _dali_crops(blobs: list[bytes], resize: int, crop: int, naive: bool = False) -> list[np.ndarray]:
    """DALI CPU decoding and ``resize_and_center_crop`` (or, ``naive``, DALI's own resize_shorter + crop,
    which lands off torchvision's grid: the comparison must catch it)."""
    feed = (np.frombuffer(b, np.uint8) for b in itertools.cycle(blobs))

    @pipeline_def(batch_size=BATCH, num_threads=2, device_id=None)
    def pipe():
        enc = fn.external_source(source=lambda: next(feed), batch=False)
        img = fn.decoders.image(enc, device="cpu", output_type=types.RGB, **no_exif_rotation("decoders__Image"))
        if naive:
            img = fn.resize(img, resize_shorter=resize, interp_type=types.INTERP_LINEAR, antialias=True)
            return fn.crop(img, crop=(crop, crop), out_of_bounds_policy="pad", fill_values=0)
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


def geometry_differences(blobs: list[bytes], resize: int, crop: int, naive: bool = False) -> list[float]:
    """Per-image mean absolute difference (0..255) between the DALI crops and torchvision's."""
    got = _dali_crops(blobs, resize, crop, naive)
    want = _torchvision_crops(blobs, resize, crop)
    diffs = []
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.uint8
        assert g.shape == w.shape == (crop, crop, 3), f"DALI {g.shape} vs torchvision {w.shape}"
        diffs.append(float(np.abs(g.astype(np.int16) - w.astype(np.int16)).mean()))
    return diffs


def assert_geometry_matches(names: list[str], blobs: list[bytes], resize: int, crop: int) -> None:
    diffs = geometry_differences(blobs, resize, crop)
    bad = [(name, round(d, 3)) for name, d in zip(names, diffs, strict=True) if d > MAX_MEAN_ABS_DIFF]
    worst = int(np.argmax(diffs))
    print(
        f"\nresize={resize} crop={crop}: {len(diffs)} images, per-image mean|diff| max={diffs[worst]:.4f} "
        f"({names[worst]}), mean={float(np.mean(diffs)):.4f}"
    )
    assert not bad, f"{len(bad)} images over {MAX_MEAN_ABS_DIFF}: {bad}"


def _synthetic(w: int, h: int, seed: int) -> bytes:
    """A gradient with strong per-pixel noise: any shift of the sampling grid shows in the difference."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(w + h - 2, 1)], -1) * 200
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return _rgb_jpeg(Image.fromarray(arr))


@pytest.fixture(scope="module")
def edge_images() -> tuple[list[str], list[bytes]]:
    names = [f"synthetic {w}x{h}" for w, h in EDGE_SIZES]
    return names, [_synthetic(w, h, i) for i, (w, h) in enumerate(EDGE_SIZES)]


@pytest.mark.parametrize("resize,crop", [(256, 224), (128, 224), (200, 224), (40, 32)])
def test_val_geometry_edge_sizes(edge_images: tuple[list[str], list[bytes]], resize: int, crop: int) -> None:
    names, blobs = edge_images
    assert_geometry_matches(names, blobs, resize=resize, crop=crop)


def test_the_comparison_catches_a_naive_graph(edge_images: tuple[list[str], list[bytes]]) -> None:
    """DALI's resize_shorter + crop rounds the long side and the crop anchor differently from torchvision:
    the same comparison must flag it (the check above can fail)."""
    names, blobs = edge_images
    diffs = geometry_differences(blobs, resize=256, crop=224, naive=True)
    flagged = {name for name, d in zip(names, diffs, strict=True) if d > MAX_MEAN_ABS_DIFF}
    # measured: 256x341 (anchor 58.5: half to even vs away from zero) 15.5; 257x300, 300x259 and the strips
    # (long side truncated vs rounded) about 5
    assert {"synthetic 256x341", "synthetic 257x300", "synthetic 300x259"} <= flagged, dict(
        zip(names, diffs, strict=True)
    )


def test_gpu_decoder_arguments_exist_in_this_dali() -> None:
    """What the graphs ask of the mixed decoder, built without a GPU (the arguments only): train gets the
    nvJPEG buffer sizes of DALI's ResNet-50 example, validation libjpeg's chroma upsampling on the CUDA
    path. Every argument must be known to the installed DALI (``make test-dali-compat`` runs this on 1.34
    too): ``compat.supported`` would drop an unknown one without a word."""
    from dali_pipeline.pipelines import PipelineOptions, _decoder_args

    gpu = PipelineOptions(batch_size=8, device_id=0)
    train = _decoder_args("decoders__ImageRandomCrop", gpu)
    buffers = {"device_memory_padding": 211025920, "host_memory_padding": 140544512}
    buffers |= {"preallocate_width_hint": 5980, "preallocate_height_hint": 6430}
    assert train.items() >= (buffers | {"hw_decoder_load": 0.65}).items(), train
    assert "jpeg_fancy_upsampling" not in train  # off: training's augmentation needs no exact pixels
    val = _decoder_args("decoders__Image", gpu, train=False)
    assert val["jpeg_fancy_upsampling"] is True and val["hw_decoder_load"] == 0.0, val
    assert not set(buffers) & set(val), val  # DALI's defaults: validation holds less
    cpu = PipelineOptions(batch_size=8)
    for schema in ("decoders__ImageRandomCrop", "decoders__Image"):
        assert set(_decoder_args(schema, cpu)) <= {"output_type", "adjust_orientation"}
