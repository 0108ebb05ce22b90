"""A small, learnable ImageFolder of JPEGs, so the demo and tests need no downloaded dataset.

Each class has its own stripe orientation and colour; size, phase, noise and brightness vary per image,
so a network must learn the pattern rather than memorise pixels. Sizes are ImageNet-like (about
300-500 px a side). Output is deterministic for a given seed.

    python -m lmdb_io.demo_images OUT_DIR --classes 4 --per-class 60
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


def make_image(rng: np.random.Generator, label: int, num_classes: int) -> Image.Image:
    width, height = int(rng.integers(300, 500)), int(rng.integers(240, 400))
    angle = np.pi * label / num_classes
    period = rng.uniform(18, 30)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi))
    hue = np.array([np.cos(angle * 2), np.cos(angle * 2 + 2.1), np.cos(angle * 2 + 4.2)], dtype=np.float32)
    base = 128 + 60 * hue * rng.uniform(0.7, 1.0)
    pixels = base + 50 * wave[..., None] + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_image_folder(root: str, classes: int = 4, per_class: int = 60, seed: int = 0, quality: int = 90) -> int:
    """Write ``root/class_XX/img_YYYY.jpg``; returns the number of images written (existing ones kept)."""
    rng = np.random.default_rng(seed)
    written = 0
    for label in range(classes):
        class_dir = os.path.join(root, f"class_{label:02d}")
        os.makedirs(class_dir, exist_ok=True)
        for i in range(per_class):
            image = make_image(rng, label, classes)
            path = os.path.join(class_dir, f"img_{i:04d}.jpg")
            if not os.path.exists(path):
                image.save(path, format="JPEG", quality=quality)
                written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmdb_io.demo_images", description=__doc__.splitlines()[0])
    p.add_argument("root", help="output ImageFolder directory")
    p.add_argument("--classes", type=int, default=4, help="number of classes (default 4)")
    p.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    n = make_image_folder(args.root, args.classes, args.per_class, args.seed)
    print(f"{args.root}: {n} new images ({args.classes} classes x {args.per_class})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
