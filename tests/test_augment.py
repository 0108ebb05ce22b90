"""Each training sample's augmentation is a pure function of (seed, epoch, dataset index) and its image size
(``lmdb_io.reading.augment``), followed by both loaders: the same crop and flip in the DALI and the torch
loader, after a resume on another world size or batch size, and after a DALI pipeline rebuilt around a
record it could not decode. Image parity between the loaders is in ``test_loaders.py`` (generated data) and
``test_realdata_loaders.py`` (hymenoptera)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from lmdb_io.reading.augment import crop_box, train_view
from lmdb_io.reading.presets import TrainPreset

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
