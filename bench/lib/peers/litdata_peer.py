"""LitData: the JPEG bytes ``optimize``d into a chunked dataset directory, read by ``StreamingDataset``
and ``StreamingDataLoader`` with a worker per core, decoded by torchvision (its ImageNet example's way)."""

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import Batches, Samples, tensor_transform

CHUNK_BYTES = "16MB"  # several chunks per worker on a 1,000-image set (ImageNet has thousands)


def _item(sample: tuple[int, str, int]) -> dict[str, Any]:
    """One record (module level: ``optimize``'s worker processes pickle it)."""
    index, path, label = sample
    return {"image": Path(path).read_bytes(), "label": label, "index": index}


def build(samples: Samples, out: Path, workers: int = 0) -> Path:
    """``out``: a LitData dataset directory holding each file's bytes, label and index."""
    import litdata

    inputs = [(i, str(f), label) for i, (f, label) in enumerate(zip(samples.files, samples.labels, strict=True))]
    workers = workers or len(os.sched_getaffinity(0))
    options = dict(chunk_bytes=CHUNK_BYTES, num_workers=workers, mode="overwrite", verbose=False)
    litdata.optimize(fn=_item, inputs=inputs, output_dir=str(out), **options)
    return out


class _Decode:
    """The dataset's ``transform``: JPEG bytes -> normalised float32 CHW tensor (picklable for workers)."""

    def __init__(self, crop: int) -> None:
        self.transform = tensor_transform(crop)

    def __call__(self, item: dict[str, Any]) -> tuple[Any, int, int]:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        data = torch.frombuffer(bytearray(item["image"]), dtype=torch.uint8)
        return self.transform(decode_jpeg(data, mode=ImageReadMode.RGB)), item["label"], item["index"]


def loader(path: Path, batch: int, crop: int, workers: int) -> Callable[[int], Iterable[Any]]:
    """``make(seed)``: a shuffled ``StreamingDataset`` over ``path`` in a ``StreamingDataLoader``."""
    from litdata import StreamingDataLoader, StreamingDataset

    def make(seed: int) -> Iterable[Any]:
        dataset = StreamingDataset(str(path), shuffle=True, seed=seed, transform=_Decode(crop))
        return Batches(StreamingDataLoader(dataset, batch_size=batch, num_workers=workers, drop_last=True))

    return make
