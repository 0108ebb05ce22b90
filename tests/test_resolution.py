"""Progressive resizing's schedule (``lmdb_io.reading.resolution``): FFCV's ``get_resolution``, value for value."""

from __future__ import annotations

import numpy as np
import pytest

from lmdb_io.reading.resolution import ResolutionSchedule


def ffcv_get_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int) -> int:
    """FFCV's examples' ``get_resolution`` (ffcv-imagenet train_imagenet.py), as published."""
    assert min_res <= max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


def test_ffcv_rn50_recipe_values() -> None:
    """FFCV's ResNet-50 88-epoch recipe (160 to 192 px, ramp over epochs 65-76), worked by hand: the ramp
    moves in 32 px steps, and 176 (5.5 x 32) rounds half to even, to 192, as numpy does."""
    schedule = ResolutionSchedule(min_res=160, max_res=192, start_ramp=65, end_ramp=76)
    sizes = [schedule.for_epoch(e) for e in range(88)]
    assert sizes[:71] == [160] * 71  # epoch 70: 160 + 32 x 5 / 11 = 174.5 px = 5.45 x 32 -> 160
    assert sizes[71:] == [192] * 17  # epoch 71: 160 + 32 x 6 / 11 = 177.5 px = 5.55 x 32 -> 192
    half = ResolutionSchedule(min_res=160, max_res=192, start_ramp=0, end_ramp=2)
    assert half.for_epoch(1) == 192  # exactly 176 = 5.5 x 32: half to even


@pytest.mark.parametrize(
    "min_res, max_res, start_ramp, end_ramp",
    [(160, 192, 65, 76), (128, 224, 10, 30), (64, 256, 0, 7), (160, 224, 3, 3), (96, 96, 0, 0), (32, 64, 1, 2)],
)
def test_matches_ffcv_formula_at_every_epoch(min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> None:
    schedule = ResolutionSchedule(min_res, max_res, start_ramp, end_ramp)
    for epoch in range(end_ramp + 5):
        expected = ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp)
        assert schedule.for_epoch(epoch) == expected, epoch
        assert min_res <= schedule.for_epoch(epoch) <= max_res and schedule.for_epoch(epoch) % 32 == 0


def test_fixed_is_one_size_whatever_the_epoch() -> None:
    """min_res == max_res, as ``--min-res`` and ``--max-res`` left equal give it (config.py)."""
    fixed = ResolutionSchedule(224, 224, 0, 0)
    assert not fixed.progressive and {fixed.for_epoch(e) for e in range(100)} == {224}
    assert ResolutionSchedule(37, 37, 0, 0).for_epoch(5) == 37  # no rounding when nothing ramps


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((192, 160, 0, 5), "min_res <= max_res"),
        ((0, 160, 0, 5), "min_res <= max_res"),
        ((160, 192, 5, 2), "start_ramp <= end_ramp"),
        ((160, 192, -1, 2), "start_ramp <= end_ramp"),
        ((100, 192, 0, 5), "multiples of 32"),
    ],
)
def test_refuses_a_schedule_that_cannot_be(args: tuple[int, int, int, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ResolutionSchedule(*args)
