"""The loaders users pick instead of this project, each ``build`` (its files from ``Samples``) and ``loader``
(``make(seed)`` yielding ``Batch`` es) as its users run it: FFCV (a ``.beton`` as its ImageNet recipe writes
one: ``RGBImageField``, JPEG re-encoded at quality 90, optionally capped by ``max_resolution``; its stored
JPEG bytes read back out so that this project's loaders can be fed exactly what FFCV decodes), LitData (the
JPEG bytes ``optimize``d into chunks, decoded by torchvision) and WebDataset (tar shards, PIL decode); the
last two with a DataLoader worker per core."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmdb_dali_train.loaders.batch import Batch
from lmdb_io.reading.presets import TrainPreset

from .. import BenchError

FLOAT = "float32 CHW"  # the output every contender delivers, ours included
Make = Callable[[int], Iterable[Any]]  # seed -> a loader over one epoch
FFCV_QUALITY = 90  # RGBImageField's default, the recipe's setting
FFCV_BATCHES_AHEAD = 3  # Loader's default: batches it prepares before the one being taken
LITDATA_CHUNK_BYTES = "16MB"  # several chunks per worker on a 1,000-image set (ImageNet has thousands)
WDS_SHARD_SAMPLES = 100  # small shards so every worker gets several on a 1,000-image set
WDS_SHUFFLE_BUFFER = 1000


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[package] set to None to block it
        return False


@dataclass(frozen=True)
class Peer:
    """A peer loader: how its users run it, the packages it needs, its ``build`` and its ``loader``."""

    what: str
    how: str
    packages: tuple[str, ...]
    build: Callable[..., Path]
    loader: Callable[[Path, int, int, int], Make]

    def missing(self) -> str | None:
        absent = [p for p in self.packages if not _installed(p)]
        return f"not run: {', '.join(absent)} not installed (pip install '.[bench]')" if absent else None


@dataclass(frozen=True)
class Samples:
    """An ImageFolder tree as a list in ImageFolder's order, so index i means the same image everywhere."""

    files: list[Path]
    labels: list[int]
    classes: list[str]

    @classmethod
    def from_tree(cls, root: Path) -> Samples:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        found = [(f, label) for label, name in enumerate(classes) for f in sorted((root / name).iterdir())]
        if not found:
            raise BenchError(f"no images under {root}")
        return cls([f for f, _ in found], [label for _, label in found], classes)

    def __len__(self) -> int:
        return len(self.files)


class Batches:
    """A peer loader's (images, labels, indices) as ``Batch`` es (no length: the streaming peers know none)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, indices in self.inner:
            labels, indices = torch.as_tensor(labels).reshape(-1), torch.as_tensor(indices).reshape(-1)
            yield Batch(images, labels, indices, torch.zeros(len(labels), dtype=torch.bool))


class SizedBatches(Batches):
    def __len__(self) -> int:
        return len(self.inner)


def _workers(workers: int) -> int:
    return workers or len(os.sched_getaffinity(0))


class _FFCVImages:
    """The indexed dataset FFCV's ``DatasetWriter`` reads: (RGB PIL image, label, index)."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        from PIL import Image

        with Image.open(self.samples.files[i]) as im:
            return im.convert("RGB"), self.samples.labels[i], i


def ffcv_build(samples: Samples, out: Path, max_resolution: int | None = None, workers: int = 0) -> Path:
    """``out`` (a .beton): image (JPEG q90, longer side capped at ``max_resolution`` if given), label, index."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image = RGBImageField(write_mode="jpg", max_resolution=max_resolution, jpeg_quality=FFCV_QUALITY)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = {"image": image, "label": IntField(), "index": IntField()}
    writer = DatasetWriter(str(out), fields, num_workers=_workers(workers))
    writer.from_indexed_dataset(_FFCVImages(samples))
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


def ffcv_loader(path: Path, batch: int, crop: int, workers: int) -> Make:
    """The next epoch of one ``ffcv.Loader`` over ``path`` (built, seeded by the first call; its JIT compile
    falls on its first batch)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

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
        built.append(
            Loader(str(path), **options, batches_ahead=FFCV_BATCHES_AHEAD, pipelines=pipelines, drop_last=True)
        )
        return SizedBatches(built[0])

    return make


def _litdata_item(sample: tuple[int, str, int]) -> dict[str, Any]:
    """One LitData record (module level: ``optimize``'s worker processes pickle it)."""
    index, path, label = sample
    return {"image": Path(path).read_bytes(), "label": label, "index": index}


def litdata_build(samples: Samples, out: Path, workers: int = 0) -> Path:
    import litdata

    inputs = [(i, str(f), label) for i, (f, label) in enumerate(zip(samples.files, samples.labels, strict=True))]
    options = dict(chunk_bytes=LITDATA_CHUNK_BYTES, num_workers=_workers(workers), mode="overwrite", verbose=False)
    litdata.optimize(fn=_litdata_item, inputs=inputs, output_dir=str(out), **options)
    return out


def tensor_transform(crop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW tensor -> normalised float32 CHW: the train preset in torchvision.transforms.v2."""
    from torchvision.transforms import v2

    p = TrainPreset(crop)
    crop_op = v2.RandomResizedCrop(crop, scale=p.area, ratio=p.aspect_ratio, antialias=True)
    flip, to_float = v2.RandomHorizontalFlip(p.flip_probability), v2.ToDtype(torch.float32, scale=True)
    return v2.Compose([crop_op, flip, to_float, v2.Normalize(p.mean, p.std)])


class _LitDataDecode:
    """LitData's ``transform``: JPEG bytes -> normalised float32 CHW tensor (picklable for workers)."""

    def __init__(self, crop: int) -> None:
        self.transform = tensor_transform(crop)

    def __call__(self, item: dict[str, Any]) -> tuple[Any, int, int]:
        from torchvision.io import ImageReadMode, decode_jpeg

        data = torch.frombuffer(bytearray(item["image"]), dtype=torch.uint8)
        return self.transform(decode_jpeg(data, mode=ImageReadMode.RGB)), item["label"], item["index"]


def litdata_loader(path: Path, batch: int, crop: int, workers: int) -> Make:
    from litdata import StreamingDataLoader, StreamingDataset

    def make(seed: int) -> Iterable[Any]:
        dataset = StreamingDataset(str(path), shuffle=True, seed=seed, transform=_LitDataDecode(crop))
        return Batches(StreamingDataLoader(dataset, batch_size=batch, num_workers=workers, drop_last=True))

    return make


def wds_build(samples: Samples, out: Path) -> Path:
    """``out/shard-NNNNNN.tar``: per sample ``KEY.jpg`` (the file's bytes) and ``KEY.cls`` (its label);
    the key is the sample's index."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=WDS_SHARD_SAMPLES, verbose=0) as sink:
        for i, (f, label) in enumerate(zip(samples.files, samples.labels, strict=True)):
            sink.write({"__key__": f"{i:08d}", "jpg": f.read_bytes(), "cls": label})
    return out


def _wds_key(key: str) -> int:
    return int(key.rsplit("/", 1)[-1])


def wds_loader(path: Path, batch: int, crop: int, workers: int) -> Make:
    import webdataset as wds
    from torchvision import transforms

    shards = sorted(str(p) for p in path.glob("shard-*.tar"))
    p = TrainPreset(crop)  # as WebDataset's users write it: PIL in the workers, ToTensor, Normalize there too
    crop_op = transforms.RandomResizedCrop(crop, scale=p.area, ratio=p.aspect_ratio)
    flip = transforms.RandomHorizontalFlip(p.flip_probability)
    transform = transforms.Compose([crop_op, flip, transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])

    def make(seed: int) -> Iterable[Any]:
        torch.manual_seed(seed)
        dataset = (
            wds.WebDataset(shards, shardshuffle=len(shards), seed=seed, empty_check=False)
            .shuffle(WDS_SHUFFLE_BUFFER)
            .decode("pil")
            .to_tuple("jpg", "cls", "__key__")
            .map_tuple(transform, int, _wds_key)
        )
        return Batches(torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, drop_last=True))

    return make


FFCV_HOW = "`ffcv.Loader(num_workers=cores, os_cache=True, order=RANDOM)`: RandomResizedCropRGBImageDecoder, "
FFCV_HOW += f"RandomHorizontalFlip, NormalizeImage to {FLOAT} (before ToTensor, ToTorchImage: the CPU order, "
FFCV_HOW += "libffcv/ffcv#396)"
LITDATA_HOW = "`litdata.optimize` the JPEG bytes, `StreamingDataset(shuffle=True)` + `StreamingDataLoader(num_workers="
LITDATA_HOW += f"cores)`: `torchvision.io.decode_jpeg`, RandomResizedCrop, flip, to {FLOAT}, Normalize"
WDS_HOW = "`wds.WebDataset(shards, shardshuffle).shuffle(1000).decode('pil')` + `DataLoader(num_workers=cores)`: "
WDS_HOW += f"RandomResizedCrop, flip, ToTensor, Normalize to {FLOAT}"
LITDATA = "LitData `StreamingDataset` (torchvision decode)"
PEERS: dict[str, Peer] = {
    "ffcv": Peer("FFCV", FFCV_HOW, ("ffcv", "cv2", "numba"), ffcv_build, ffcv_loader),
    "litdata": Peer(LITDATA, LITDATA_HOW, ("litdata",), litdata_build, litdata_loader),
    "wds": Peer("WebDataset tar shards + DataLoader (PIL)", WDS_HOW, ("webdataset",), wds_build, wds_loader),
}
