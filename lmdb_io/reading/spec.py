"""``ReadSpec``: what one rank reads and in which order, whichever loader reads it.

Both loader factories (``lmdb_dali_train.loaders``) take one, so the torchvision and the DALI loader are
described the same way: the data (a database or an ImageFolder tree), the split, the batch, the rank,
the seed, the crop sizes and where a resumed run starts. What a loader hands over (device, dtype,
memory format) and how it runs (worker processes, threads) are the factories' own keyword arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .plan import RankPlan
from .presets import Preset, preset_for
from .resolution import ResolutionSchedule


@dataclass(frozen=True, kw_only=True)
class ReadSpec:
    """One rank's reading of one split.

    ``path``: an lmdb_io database (``lmdb=True``) or an ImageFolder tree (``lmdb=False``); ``lmdb=None``
    tells them apart by the path. ``verify``: check each database record's checksum as it is read.
    ``rank`` is the global rank. ``train``: shuffled, whole batches, augmented; else in order, the last
    batch padded, resized and center cropped (``val_resize``, then ``crop``). ``resolution``: progressive
    resizing (training only); without it every epoch crops ``crop``. ``skip``: positions of
    ``first_epoch``'s global order already trained on (see ``RankPlan``). ``known_bad``: dataset indices
    of records known to be bad before reading (a resumed run's, from its checkpoint): replaced from the
    start, never read.
    """

    path: str | os.PathLike
    train: bool
    batch_size: int
    lmdb: bool | None = None
    verify: bool = True
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    crop: int = 224
    val_resize: int = 256
    resolution: ResolutionSchedule | None = None
    first_epoch: int = 0
    skip: int = 0
    known_bad: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.resolution is not None and not self.train:
            raise ValueError("a resolution schedule is for training; validation keeps its preset's size")

    def is_database(self) -> bool:
        """Whether ``path`` is read as an lmdb_io database (else as an ImageFolder tree)."""
        if self.lmdb is not None:
            return self.lmdb
        from lmdb_io.env import is_database

        return is_database(self.path)

    @property
    def rank_seed(self) -> int:
        """The seed of this rank's random augmentation draws where a loader seeds per rank (DALI's pipeline):
        ranks differ, and a rank draws the same in every run."""
        return self.seed + self.rank

    def preset(self) -> Preset:
        return preset_for(self.train, self.crop, self.val_resize)

    def plan(self, length: int) -> RankPlan:
        """The rank's reading order over a dataset of ``length`` samples."""
        return RankPlan(
            length=length,
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            seed=self.seed,
            shuffle=self.train,  # training: shuffled, whole batches; evaluation: in order, the last padded
            drop_last=self.train,
            first_epoch=self.first_epoch,
            skip=self.skip,
        )
