"""Each training sample's augmentation as a pure function of (seed, epoch, dataset index) and its image size.

``train_view`` is the one definition both loaders follow: the DALI source hands its crop window and flip to
the graph (``dali_pipeline.source``), the torch loader crops and flips the PIL image with them
(``lmdb_dali_train.loaders.torch_loader``). The crop box is torchvision's ``RandomResizedCrop.get_params``,
step for step (``TrainPreset.attempts`` tries of an area drawn uniformly from ``area`` and an aspect ratio
drawn log-uniformly from ``aspect_ratio``, then its center-crop fallback); the flip is drawn with
``flip_probability``. The size is the image header's (``lmdb_io.imagecheck.image_size``; EXIF orientation
ignored, as by both decoders).

The draws come from a counter-based generator: BLAKE2b of (seed, epoch, index, block) gives four 64-bit
numbers per block, so any sample's draws cost two or three hashes (about a microsecond each) and never
depend on another sample's. Nothing here reads the rank, the world size, the batch size or the worker
count: a sample gets the same crop and flip in every loader, process and run, after any resume.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

from .presets import TrainPreset

_MASK = (1 << 64) - 1
_WORDS = struct.Struct("<4Q")  # a block's key (seed, epoch, index, block) and its four draws
_UNIT = 2.0**-53  # the top 53 bits of a draw to [0, 1), as numpy turns 64-bit draws into doubles


@dataclass(frozen=True)
class TrainView:
    """Where one sample is cropped (torchvision's ``(top, left, height, width)`` box, in pixels of the
    image as stored) and whether the crop is flipped horizontally."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def _block(seed: int, epoch: int, index: int, block: int) -> tuple[int, int, int, int]:
    """Four uniform 64-bit numbers: block ``block`` of sample ``index``'s stream in ``epoch``."""
    message = _WORDS.pack(seed & _MASK, epoch & _MASK, index & _MASK, block)
    return _WORDS.unpack(hashlib.blake2b(message, digest_size=32).digest())


def crop_box(
    width: int, height: int, preset: TrainPreset, seed: int, epoch: int, index: int
) -> tuple[int, int, int, int]:
    """(top, left, height, width): ``RandomResizedCrop.get_params``' algorithm on a ``width`` x ``height``
    image, attempt ``k`` drawing from block ``k + 1`` of the sample's stream."""
    area = height * width
    low, high = preset.area
    log_low, log_high = math.log(preset.aspect_ratio[0]), math.log(preset.aspect_ratio[1])
    for attempt in range(preset.attempts):
        u_area, u_ratio, u_top, u_left = _block(seed, epoch, index, attempt + 1)
        target_area = area * (low + (high - low) * ((u_area >> 11) * _UNIT))
        aspect_ratio = math.exp(log_low + (log_high - log_low) * ((u_ratio >> 11) * _UNIT))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return u_top % (height - h + 1), u_left % (width - w + 1), h, w
    # torchvision's fallback: the central crop at the nearest allowed aspect ratio
    in_ratio = float(width) / float(height)
    if in_ratio < min(preset.aspect_ratio):
        w = width
        h = int(round(w / min(preset.aspect_ratio)))
    elif in_ratio > max(preset.aspect_ratio):
        h = height
        w = int(round(h * max(preset.aspect_ratio)))
    else:  # the whole image
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(preset: TrainPreset, seed: int, epoch: int, index: int, size: tuple[int, int]) -> TrainView:
    """Dataset sample ``index``'s crop box and flip in ``epoch`` of a run seeded ``seed``, for an image of
    ``size`` = (width, height) by its header."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"an image of {width}x{height} px has nothing to crop")
    flip = (_block(seed, epoch, index, 0)[0] >> 11) * _UNIT < preset.flip_probability
    return TrainView(*crop_box(width, height, preset, seed, epoch, index), flip=flip)
