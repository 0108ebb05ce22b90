"""Validation geometry for DALI that reproduces torchvision's
``transforms.Resize(resize)`` + ``transforms.CenterCrop(crop)`` (PIL path)
with the same integer arithmetic, so that DALI's output lands on the same
pixel grid as the torchvision reference.

Why the naive graph is off by one pixel:

* ``fn.resize(resize_shorter=s)`` rounds the long side
  (``round(s * long / short)``) where torchvision truncates
  (``int(s * long / short)``).
* ``fn.crop``/``crop_mirror_normalize`` place the window at
  ``round(0.5 * (W - crop))`` with half-away-from-zero rounding, while
  torchvision uses Python's ``round`` (half to even) on ``(W - crop) / 2``.

Here both sizes and the crop anchor are computed per sample in the graph from
the encoded image's shape (``fn.peek_image_shape``, a CPU op, so the result can
be used as argument input of GPU operators too), and the window is cut with
``fn.slice`` at absolute anchors.

Only DALI APIs that exist in DALI 1.34 as well as 2.x are used: DataNode
arithmetic ``+ - * //`` and comparisons (no ``%``, which 1.34 lacks),
``DataNode.__getitem__``, ``fn.stack``, ``fn.cast``,
``fn.resize(resize_x=, resize_y=)``, ``fn.slice(start=, shape=, axes=,
out_of_bounds_policy=, fill_values=)``. Integer ``//`` in DALI truncates
towards zero (C semantics), so it is only ever applied to non-negative values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvidia.dali import fn, types

from .compat import no_exif_rotation

if TYPE_CHECKING:
    from nvidia.dali.data_node import DataNode

__all__ = ["resize_and_center_crop"]


def _half_round_even(d: DataNode) -> DataNode:
    """Python ``round(d / 2)`` (half to even) for a non-negative int DataNode."""
    k = d // 2
    r = d - 2 * k  # d odd -> 1
    k_odd = k - 2 * (k // 2)  # k odd -> 1
    return k + r * k_odd


def _crop_anchor(n: DataNode, c: int) -> DataNode:
    """torchvision center_crop anchor along one axis of length ``n`` (int
    DataNode) for a window of ``c``.

    n >= c: ``int(round((n - c) / 2.0))`` (Python round, half to even);
    n <  c: torchvision pads ``(c - n) // 2`` on the leading side and then
            crops at 0, i.e. anchor ``-((c - n) // 2)`` in the unpadded image.
    """
    fits = n >= c  # bool DataNode
    over = fn.cast(fits, dtype=types.INT64)
    under = 1 - over
    d_pos = over * (n - c)  # max(n - c, 0)
    d_neg = under * (c - n)  # max(c - n, 0)
    return over * _half_round_even(d_pos) - under * (d_neg // 2)


def resize_and_center_crop(
    images: DataNode, encoded: DataNode, resize: int = 256, crop: int = 224, device: str = "cpu"
) -> DataNode:
    """images: decoded HWC RGB uint8 DataNode; encoded: the encoded bytes DataNode (for fn.peek_image_shape, a CPU op).
    Returns the HWC uint8 DataNode of the center crop, matching torchvision within 1 px geometry.

    ``device``: where ``images`` live: "cpu", or "gpu"/"mixed" (output of a
    mixed decoder). The size/anchor arithmetic always runs on the CPU.
    """
    resize = int(resize)
    crop = int(crop)
    if resize <= 0 or crop <= 0:
        raise ValueError(f"resize and crop must be positive, got {resize}, {crop}")
    op_device = "gpu" if device in ("gpu", "mixed", "cuda") else "cpu"

    # Encoded (un-rotated, like PIL) H, W, C.
    shape = fn.peek_image_shape(encoded, **no_exif_rotation("PeekImageShape"))
    shape = fn.cast(shape, dtype=types.INT64)
    h = shape[0]
    w = shape[1]

    # torchvision _compute_resized_output_size for an int size:
    #   short, long = (w, h) if w <= h else (h, w)
    #   new_short, new_long = s, int(s * long / short)
    # int(s * long / short) == (s * long) // short for positive ints (the
    # float quotient is never within an ulp of the next integer).
    w_short = fn.cast(w <= h, dtype=types.INT64)
    h_short = 1 - w_short
    new_w = w_short * resize + h_short * ((resize * w) // h)
    new_h = h_short * resize + w_short * ((resize * h) // w)

    # torchvision returns the image untouched when the size already matches;
    # DALI's linear resampling at scale 1 samples pixel centres exactly, so
    # resizing to the same size is an identity as well.
    resized = fn.resize(
        images,
        device=op_device,
        resize_x=fn.cast(new_w, dtype=types.FLOAT),
        resize_y=fn.cast(new_h, dtype=types.FLOAT),
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )

    anchor = fn.stack(_crop_anchor(new_h, crop), _crop_anchor(new_w, crop))
    return fn.slice(
        resized,
        device=op_device,
        start=fn.cast(anchor, dtype=types.INT32),
        shape=[crop, crop],
        axes=[0, 1],
        out_of_bounds_policy="pad",
        fill_values=0,
    )
