"""Progressive resizing: the training resolution of each epoch, FFCV's schedule.

Low resolution early, full resolution late (FFCV's ImageNet recipe, after "Fixing the train-test
resolution discrepancy"): ``min_res`` up to epoch ``start_ramp``, ``max_res`` from epoch ``end_ramp`` on,
and in between a linear ramp rounded to a multiple of 32 (FFCV's ``get_resolution``, to the rounding).
Epochs count from 0, as the trainer's do. Both loaders ask ``for_epoch`` of the epoch a sample belongs to
(the DALI source and the torch loader's items know it), so a resumed run trains at its epoch's size and
the batch size stays what it was. Validation keeps its own size (``ValPreset``).

Plain Python: DALI's spawned source workers import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

ROUND_TO = 32  # FFCV rounds the ramp's sizes to a multiple of this


@dataclass(frozen=True)
class ResolutionSchedule:
    """Square training crops of ``for_epoch(e)`` pixels a side in epoch ``e``."""

    min_res: int
    max_res: int
    start_ramp: int
    end_ramp: int

    def __post_init__(self) -> None:
        if not 0 < self.min_res <= self.max_res:
            raise ValueError(f"resolutions must satisfy 0 < min_res <= max_res, not {self.min_res}, {self.max_res}")
        if not 0 <= self.start_ramp <= self.end_ramp:
            raise ValueError(
                f"ramp epochs must satisfy 0 <= start_ramp <= end_ramp, not {self.start_ramp}, {self.end_ramp}"
            )
        if self.progressive and (self.min_res % ROUND_TO or self.max_res % ROUND_TO):
            # then every size of the ramp lies between them (FFCV's rounding could leave the range, or reach 0)
            raise ValueError(f"min_res and max_res must be multiples of {ROUND_TO}, not {self.min_res}, {self.max_res}")

    @property
    def progressive(self) -> bool:
        return self.min_res != self.max_res

    def for_epoch(self, epoch: int) -> int:
        if epoch <= self.start_ramp:
            return self.min_res
        if epoch >= self.end_ramp:
            return self.max_res
        # np.interp's arithmetic on plain floats: asked for every sample, numpy's call would cost 3 us each
        slope = (self.max_res - self.min_res) / (self.end_ramp - self.start_ramp)
        return round((slope * (epoch - self.start_ramp) + self.min_res) / ROUND_TO) * ROUND_TO
