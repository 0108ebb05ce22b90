"""FFCV: a ``.beton`` written as its ImageNet recipe writes one (``RGBImageField``, JPEG re-encoded at
quality 90, optionally capped by ``max_resolution``) and its ``Loader`` as its users run it. Also reads
the stored JPEG bytes back out, so this project's loaders can be fed exactly what FFCV decodes."""

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import BenchError
from . import Samples, SizedBatches

JPEG_QUALITY = 90  # RGBImageField's default, the recipe's setting
BATCHES_AHEAD = 3  # Loader's default: batches it prepares before the one being taken


class _Images:
    """The indexed dataset ``DatasetWriter`` reads: (RGB PIL image, label, index)."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        from PIL import Image

        with Image.open(self.samples.files[i]) as im:
            return im.convert("RGB"), self.samples.labels[i], i


def build(samples: Samples, out: Path, max_resolution: int | None = None, workers: int = 0) -> Path:
    """``out`` (a .beton): image (JPEG q90, longer side capped at ``max_resolution`` if given), label, index."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image = RGBImageField(write_mode="jpg", max_resolution=max_resolution, jpeg_quality=JPEG_QUALITY)
    fields = {"image": image, "label": IntField(), "index": IntField()}
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(str(out), fields, num_workers=workers or len(os.sched_getaffinity(0)))
    writer.from_indexed_dataset(_Images(samples))
    return out


def stored_jpegs(beton: Path) -> Iterator[tuple[int, int, bytes]]:
    """(index, label, the JPEG bytes FFCV stored) per sample: the image field's ``data_ptr`` located in
    the allocation table, which holds each allocation's size (metadata fields are named f0, f1, ... in
    the order of ``Reader.field_names``)."""
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    sizes = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist(), strict=True))
    raw = np.memmap(beton, dtype=np.uint8, mode="r")
    meta = reader.metadata
    images, labels, indices = (meta[f"f{reader.field_names.index(name)}"] for name in ("image", "label", "index"))
    for row in range(len(meta)):
        if images[row]["mode"] != 0:  # IMAGE_MODES["jpg"]
            raise BenchError(f"{beton}: sample {row} is not stored as JPEG")
        ptr = int(images[row]["data_ptr"])
        yield int(indices[row]), int(labels[row]), raw[ptr : ptr + sizes[ptr]].tobytes()


def jpeg_bytes(beton: Path) -> int:
    """The bytes of stored data (the allocations) in ``beton``: its file size is rounded up to whole pages."""
    from ffcv.reader import Reader

    return int(Reader(str(beton)).alloc_table["size"].sum())


def loader(path: Path, batch: int, crop: int, workers: int) -> Callable[[int], Iterable[Any]]:
    """``make(seed)``: the next epoch of one ``ffcv.Loader`` over ``path`` (built, seeded by the first
    call; its JIT compile falls on its first batch), batches as ``Batch``."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from lmdb_io.reading.presets import TrainPreset

    preset = TrainPreset(crop)
    mean, std = np.array(preset.mean) * 255, np.array(preset.std) * 255

    built: list[Any] = []  # one Loader for every round, an epoch each, as training uses it: a new one re-JITs

    def make(seed: int) -> Iterable[Any]:
        if built:
            return SizedBatches(built[0])
        decode = RandomResizedCropRGBImageDecoder((crop, crop), scale=preset.area, ratio=preset.aspect_ratio)
        # NormalizeImage after ToTorchImage (the GPU recipe's place) hangs the Loader on a CPU: a jitted op
        # after non-jitted ones (libffcv/ffcv#396)
        image = [decode, RandomHorizontalFlip(), NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()]
        pipelines = {"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()]}
        pipelines["index"] = [IntDecoder(), ToTensor(), Squeeze()]
        options = dict(batch_size=batch, num_workers=workers, os_cache=True, order=OrderOption.RANDOM, seed=seed)
        ffcv_loader = Loader(str(path), **options, batches_ahead=BATCHES_AHEAD, pipelines=pipelines, drop_last=True)
        built.append(ffcv_loader)
        return SizedBatches(ffcv_loader)

    return make
