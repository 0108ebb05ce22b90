"""Each training sample's augmentation is a pure function of (seed, epoch, dataset index) and its image size
(``lmdb_io.reading.augment``), followed by both loaders: the same crop and flip in the DALI and the torch
loader, after a resume on another world size or batch size, and after a DALI pipeline failed on a record
it could not decode (the loader goes on on the CPU with the same samples). Image parity between the
loaders is in ``test_loaders.py`` (generated data) and ``test_realdata_loaders.py`` (hymenoptera)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_dali, read_spec, undecodable_database
from test_loaders import make_loader, one_torch_thread

from lmdb_io import open_database
from lmdb_io.reading import augment
from lmdb_io.reading.augment import TrainView, crop_box, train_view
from lmdb_io.reading.presets import TrainPreset

KINDS = [pytest.param("dali", marks=needs_dali), "torch"]
PRESET = TrainPreset()


# -- the function -------------------------------------------------------------------------------------


def test_train_view_is_a_pure_function_of_seed_epoch_index_and_size() -> None:
    view = train_view(PRESET, 3, 2, 17, (500, 375))
    assert view == train_view(PRESET, 3, 2, 17, (500, 375))
    others = [train_view(PRESET, *key, (500, 375)) for key in ((4, 2, 17), (3, 3, 17), (3, 2, 18))]
    assert all(other != view for other in others)
    for index in range(300):
        width, height = 50 + 7 * index, 400 - index
        v = train_view(PRESET, 0, 0, index, (width, height))
        assert 0 <= v.top and v.top + v.height <= height and 0 <= v.left and v.left + v.width <= width
        assert v.width > 0 and v.height > 0


def _torchvision_boxes(width: int, height: int, count: int) -> list[tuple[int, int, int, int]]:
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    image = Image.new("RGB", (width, height))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return [RandomResizedCrop.get_params(image, list(PRESET.area), list(PRESET.aspect_ratio)) for _ in range(count)]


@pytest.mark.parametrize("size", [(500, 375), (64, 48), (40, 300)])
def test_crop_boxes_are_drawn_as_torchvision_draws_them(size: tuple[int, int]) -> None:
    """Same algorithm, another generator: the boxes' area share, log aspect ratio and position agree with
    ``RandomResizedCrop.get_params`` in distribution (2,000 boxes each, fixed seeds)."""
    width, height = size
    ours = [crop_box(width, height, PRESET, 1, 0, i) for i in range(2000)]
    theirs = _torchvision_boxes(width, height, 2000)

    def stats(boxes: list[tuple[int, int, int, int]]) -> list[float]:
        area = [h * w / (width * height) for _, _, h, w in boxes]
        ratio = [math.log(w / h) for _, _, h, w in boxes]
        center = [(j + w / 2) / width for _, j, _, w in boxes]
        return [statistics.fmean(area), statistics.fmean(ratio), statistics.fmean(center), statistics.pstdev(area)]

    assert stats(ours) == pytest.approx(stats(theirs), abs=0.03)


@pytest.mark.parametrize("size", [(1000, 1), (1, 1000), (3, 2000), (2000, 3)])
def test_no_fitting_attempt_falls_back_to_torchvisions_center_crop(size: tuple[int, int]) -> None:
    width, height = size
    (expected,) = set(_torchvision_boxes(width, height, 20))  # every attempt fails: deterministic
    assert {crop_box(width, height, PRESET, 0, 0, i) for i in range(20)} == {expected}


def test_flips_are_drawn_with_the_presets_probability() -> None:
    flips = [train_view(PRESET, 0, 0, i, (64, 64)).flip for i in range(4000)]
    assert sum(flips) / len(flips) == pytest.approx(0.5, abs=0.03)
    never = TrainPreset(flip_probability=0.0)
    assert not any(train_view(never, 0, 0, i, (64, 64)).flip for i in range(100))


# -- the loaders ------------------------------------------------------------------------------------


def _recorded_views(kind: str, db: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> dict[tuple[int, int], TrainView]:
    """(epoch, index) -> the view each sample of two epochs was given, as the loader asked for it."""
    import dali_pipeline.source
    import lmdb_dali_train.loaders.torch_loader as torch_loader

    seen: dict[tuple[int, int], TrainView] = {}

    def recording(preset: TrainPreset, seed: int, epoch: int, index: int, size: tuple[int, int]) -> TrainView:
        seen[(epoch, index)] = view = augment.train_view(preset, seed, epoch, index, size)
        return view

    module = dali_pipeline.source if kind == "dali" else torch_loader
    monkeypatch.setattr(module, "train_view", recording)
    loader = make_loader(kind, db, 8, train=True, seed=11, crop=32, **({"py_workers": 0} if kind == "dali" else {}))
    for _ in range(2):
        for _batch in loader:
            pass
    return {key: view for key, view in seen.items() if key[0] < 2}  # DALI's prefetching runs ahead


@needs_dali
def test_both_loaders_give_each_sample_the_same_crop_and_flip(val_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dali = _recorded_views("dali", val_db, monkeypatch)
    torch_views = _recorded_views("torch", val_db, monkeypatch)
    assert dali == torch_views and {e for e, _ in dali} == {0, 1}
    db = open_database(val_db)
    from lmdb_io.imagecheck import image_size

    for (epoch, index), view in dali.items():  # the header's size, the run's seed
        assert view == train_view(TrainPreset(crop=32), 11, epoch, index, image_size(db.read(index)[0]))


def _images_by_index(loader, epochs: int = 1) -> dict[tuple[int, int], torch.Tensor]:
    found = {}
    with one_torch_thread():
        for epoch in range(epochs):
            for batch in loader:
                for i, image, pad in zip(batch.indices.tolist(), batch.images, batch.padding.tolist(), strict=True):
                    if not pad:
                        found[(epoch, i)] = image.clone()
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_a_resume_on_another_world_and_batch_size_gives_each_sample_its_crop(train_db: Path, kind: str) -> None:
    """An uninterrupted epoch on 1 rank of batch 8 against its resume after 2 steps (16 samples) on 2 ranks
    of batch 4: every remaining sample is the same image, bit for bit."""
    straight = _images_by_index(make_loader(kind, train_db, 8, train=True, seed=3, crop=32))
    resumed: dict[tuple[int, int], torch.Tensor] = {}
    for rank in (0, 1):
        loader = make_loader(kind, train_db, 4, train=True, seed=3, crop=32, rank=rank, world_size=2, skip=16)
        resumed |= _images_by_index(loader)
    assert len(resumed) >= len(straight) - 16 - 8
    for key, image in resumed.items():
        assert torch.equal(image, straight[key]), key


@pytest.fixture(scope="module")
def undecodable_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """24 small JPEGs, record 9 one that neither DALI nor Pillow decodes (``undecodable_database``)."""
    return undecodable_database(tmp_path_factory.mktemp("undecodable"), count=24, bad=9), 9


@needs_dali
def test_a_dali_loader_whose_pipeline_failed_builds_no_other_and_goes_on_with_the_same_samples(
    undecodable_db: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs where DALI fails on a record mid-epoch: the loader finds it, shuts its pipeline down and
    builds no other (after a decoding error DALI 2.4 may crash a later pipeline of the process); it goes on
    on the CPU and asks for a fresh process. Every other sample comes, each image bit for bit either the one
    of a pipeline that knew the record bad from the start (before the failure) or the torch loader's (the
    fallback: the rest of the epoch and all of the next)."""
    from lmdb_dali_train.loaders import dali_loader
    from lmdb_dali_train.loaders.torch_loader import make_torch_loader

    builds: list[object] = []
    real_build = dali_loader.build_pipeline
    monkeypatch.setattr(dali_loader, "build_pipeline", lambda *a: builds.append(a) or real_build(*a))
    db, bad = undecodable_db
    spec, options = read_spec(db, 4, train=True, seed=2, crop=32)
    failed = dali_loader.make_dali_loader(spec, **options)
    assert isinstance(failed, dali_loader.DALILoader) and not failed.needs_fresh_process
    met = _images_by_index(failed, epochs=2)
    assert len(builds) == 1 and not hasattr(failed, "pipeline")  # shut down, never rebuilt
    assert failed.needs_fresh_process and list(failed.bad_records) == [bad]
    known = dali_loader.make_dali_loader(spec, **options)
    known.source.bad.add(bad)  # read by the source as it runs: this pipeline never meets the record
    reference = _images_by_index(known, epochs=2)
    on_cpu = _images_by_index(make_torch_loader(spec, workers=0), epochs=2)
    assert met.keys() == reference.keys() == on_cpu.keys() and all(i != bad for _, i in met)
    from_dali = {key for key, image in met.items() if torch.equal(image, reference[key])}
    from_cpu = {key for key, image in met.items() if torch.equal(image, on_cpu[key])}
    assert from_dali | from_cpu == met.keys()
    assert {e for e, _ in from_dali} == {0} and {key for key in met if key[0] == 1} <= from_cpu
    assert from_dali and from_cpu - from_dali
    assert np.mean([float(image.float().std()) for image in met.values()]) > 0
