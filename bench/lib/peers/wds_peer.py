"""WebDataset: the JPEG files in tar shards (``ShardWriter``), read by ``wds.WebDataset`` with shard and
sample shuffling, PIL decode and torchvision transforms in a ``DataLoader`` with a worker per core."""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import Batches, Samples

SHARD_SAMPLES = 100  # small shards so every worker gets several on a 1,000-image set
SHUFFLE_BUFFER = 1000


def build(samples: Samples, out: Path) -> Path:
    """``out/shard-NNNNNN.tar``: per sample ``KEY.jpg`` (the file's bytes) and ``KEY.cls`` (its label);
    the key is the sample's index. Returns ``out``."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=SHARD_SAMPLES, verbose=0) as sink:
        for i, (f, label) in enumerate(zip(samples.files, samples.labels, strict=True)):
            sink.write({"__key__": f"{i:08d}", "jpg": f.read_bytes(), "cls": label})
    return out


def _key(key: str) -> int:
    return int(key.rsplit("/", 1)[-1])


def loader(path: Path, batch: int, crop: int, workers: int) -> Callable[[int], Iterable[Any]]:
    """``make(seed)``: ``WebDataset`` over the shards under ``path`` in a ``DataLoader``."""
    import torch
    import webdataset as wds
    from torchvision import transforms

    from lmdb_io.reading.presets import TrainPreset

    shards = sorted(str(p) for p in path.glob("shard-*.tar"))
    p = TrainPreset(crop)  # as WebDataset's users write it: PIL in the workers, ToTensor, Normalize there too
    crop_op = transforms.RandomResizedCrop(crop, scale=p.area, ratio=p.aspect_ratio)
    flip = transforms.RandomHorizontalFlip(p.flip_probability)
    transform = transforms.Compose([crop_op, flip, transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])

    def make(seed: int) -> Iterable[Any]:
        torch.manual_seed(seed)
        dataset = (
            wds.WebDataset(shards, shardshuffle=len(shards), seed=seed, empty_check=False)
            .shuffle(SHUFFLE_BUFFER)
            .decode("pil")
            .to_tuple("jpg", "cls", "__key__")
            .map_tuple(transform, int, _key)
        )
        return Batches(torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, drop_last=True))

    return make
