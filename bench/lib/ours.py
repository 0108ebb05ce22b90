"""This project's train loaders as the benchmarks build them: bench's one caller of the loader factories."""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Make = Callable[[int], Iterable[Any]]  # seed -> a fresh loader, one epoch


def plan(length: int, batch: int, seed: int = 0) -> Any:
    from lmdb_io.reading.plan import RankPlan

    return RankPlan(length, batch, seed=seed)


def _dali_factory_options(options: dict[str, Any]) -> dict[str, Any]:
    """``PipelineOptions``' keywords (what the benchmarks pass, as the "memory" kind takes them) as
    ``make_dali_loader``'s."""
    import torch

    options = dict(options)
    device_id = options.pop("device_id", None)
    renamed: dict[str, Any] = {"device": "cpu" if device_id is None else f"cuda:{device_id}"}
    if "num_threads" in options:
        renamed["dali_threads"] = options.pop("num_threads")
    if options.pop("fp16_output", False):
        renamed["dtype"] = torch.float16
    return options | renamed


def plan_indices(length: int, batch: int) -> Callable[[int], list[int]]:
    """The train plan's epoch-0 indices for seed ``s``: what every contender's first epoch must deliver."""
    return lambda seed: plan(length, batch, seed).for_epoch(0).indices.tolist()


def memory_source(db: Path, length: int, batch: int, crop: int = 224) -> Any:
    from dali_pipeline.source import MemorySource
    from lmdb_io.reading.presets import TrainPreset

    return MemorySource.from_database(db, plan(length, batch), crops=TrainPreset(crop))


def loader(kind: str, db: Path, batch: int, crop: int, *, memory: Any = None, **options: Any) -> Make:
    """``make(seed)``, a fresh train loader over ``db``: "dali", "torch" (the factories, ``options`` their
    keywords), "memory" (the DALI train graph over a ``MemorySource``'s bytes, in the same plan order) or
    "random" (the LMDB source without crop windows: the decoder draws random-resized crops, a coin flips;
    the graph before the crops came from the source). "memory" and "random" take ``PipelineOptions``'."""

    def make(seed: int) -> Iterable[Any]:
        from lmdb_io.reading.spec import ReadSpec

        spec = ReadSpec(path=db, batch_size=batch, train=True, seed=seed, crop=crop)
        if kind == "torch":
            from lmdb_dali_train.loaders.torch_loader import make_torch_loader

            return make_torch_loader(spec, **options)
        if kind == "dali":
            from lmdb_dali_train.loaders.dali_loader import make_dali_loader

            return make_dali_loader(spec, **_dali_factory_options(options))
        from dali_pipeline.pipelines import PipelineOptions
        from dali_pipeline.source import LMDBSource, MemorySource
        from lmdb_dali_train.loaders.dali_loader import DALILoader
        from lmdb_io.reading.presets import TrainPreset

        preset = TrainPreset(crop)
        if kind == "random":
            from lmdb_io.database import ImageDatabase

            database = ImageDatabase(db, verify=True)
            source: Any = LMDBSource(database, plan(len(database), batch, seed))
        else:
            source = MemorySource(memory.payloads, memory.labels, plan(len(memory.payloads), batch, seed), crops=preset)
        return DALILoader(source, PipelineOptions(batch_size=batch, seed=seed, **options), preset)

    return make
