"""The fused CPU resize + flip + normalize operator: torchvision's antialiased bilinear pixels, the flip and
normalization crop_mirror_normalize would give, per-sample sizes, the train graph using it on the CPU, and
the fallback to DALI's operators (with one warning saying why) where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, needs_fused_resize
from torchvision.transforms.v2 import functional as F

from lmdb_io.demo_images import make_image_folder

pytestmark = needs_fused_resize
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _run_fused(images: list[np.ndarray], sizes: list[float], **kwargs: object) -> list[np.ndarray]:
    from nvidia.dali import fn, pipeline_def

    from dali_pipeline import fused_resize

    assert fused_resize.available(), fused_resize.unavailable_reason()

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None)
    def pipe() -> object:
        im = fn.external_source(source=lambda: images, layout="HWC")
        size = fn.external_source(source=lambda: [np.float32(s) for s in sizes])
        return fn.lmdb_dali_train.resize_flip_normalize(im, size=size, **kwargs)

    p = pipe()
    p.build()
    (out,) = p.run()
    return [np.asarray(out[i]) for i in range(len(images))]


def _torchvision(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's antialiased bilinear resize on float input (no rounding to uint8), HWC."""
    chw = torch.from_numpy(image).permute(2, 0, 1).float()
    return F.resize(chw, [size, size], antialias=True).permute(1, 2, 0).numpy()


def _crops() -> list[np.ndarray]:
    """Random-content crops of every kind the random-resized crop gives: shrinking and enlarging on each axis,
    long thin strips, a single pixel, and exactly the output size."""
    rng = np.random.default_rng(0)
    shapes = [(437, 492), (108, 28), (56, 408), (223, 276), (1, 1), (1, 300), (224, 224), (900, 700), (17, 9)]
    smooth = [np.kron(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)), np.ones((4, 4, 1)))[:h, :w] for h, w in shapes]
    return [np.ascontiguousarray(s.astype(np.uint8)) for s in smooth] + [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes
    ]


def test_pixels_are_torchvision_antialiased_bilinear() -> None:
    crops = _crops()
    out = _run_fused(crops, [224.0] * len(crops), output_layout="HWC")
    for crop, got in zip(crops, out, strict=True):
        assert got.shape == (224, 224, 3) and got.dtype == np.float32
        assert np.abs(got - _torchvision(crop, 224)).max() < 0.01, crop.shape


def test_flip_normalize_layout_and_float16_follow_the_arguments() -> None:
    from nvidia.dali import types

    crops = _crops()[:4]
    sizes = [224.0, 96.0, 160.0, 33.0]  # per sample, as a resolution schedule or a mixed batch gives them
    mirror_args = {"mean": MEAN, "std": STD, "output_layout": "CHW"}
    plain = _run_fused(crops, sizes, **mirror_args)
    flipped = _run_fused(crops, sizes, mirror=1, **mirror_args)
    half = _run_fused(crops, sizes, mirror=1, dtype=types.FLOAT16, **mirror_args)
    for crop, size, p, f, h in zip(crops, sizes, plain, flipped, half, strict=True):
        s = int(size)
        want = (_torchvision(crop, s) - np.array(MEAN)) / np.array(STD)
        assert p.shape == (3, s, s) and p.dtype == np.float32
        np.testing.assert_allclose(p, want.transpose(2, 0, 1), atol=1e-4)
        np.testing.assert_allclose(f, p[:, :, ::-1], atol=0)
        assert h.dtype == np.float16
        np.testing.assert_allclose(h.astype(np.float32), f, atol=1e-2)


def _jpegs(root: Path, count: int) -> list[np.ndarray]:
    make_image_folder(str(root), classes=1, per_class=count)
    return [np.fromfile(f, np.uint8) for f in sorted(root.rglob("*.jpg"))][:count]


def _train_outputs(payloads: list[np.ndarray], fused: bool) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """The train graph's stage names, each sample's decoded crop, and the graph's output."""
    from nvidia.dali import fn, pipeline_def

    from dali_pipeline.pipelines import PipelineOptions, train_stages
    from lmdb_io.reading.presets import TrainPreset

    opts = PipelineOptions(batch_size=len(payloads), device_id=None, num_threads=2, fused_cpu_resize=fused)
    names: list[str] = []

    @pipeline_def(batch_size=len(payloads), num_threads=2, device_id=None, seed=7)
    def pipe() -> object:
        stages = train_stages(fn.external_source(source=lambda: payloads), TrainPreset(), opts)
        names.extend(name for name, _ in stages)
        return stages[0][1], stages[-1][1]

    p = pipe()
    p.build()
    crops, out = p.run()
    return names, [np.asarray(crops[i]) for i in range(len(payloads))], np.asarray(out.as_array())


def test_cpu_train_graph_uses_it(tmp_path: Path) -> None:
    """Each image is its random-resized crop through torchvision's resize, flipped or not, normalized; the
    flips vary. With the option off, the graph is DALI's operators."""
    from dali_pipeline.pipelines import FUSED_TRAIN_STAGES, TRAIN_STAGES

    payloads = _jpegs(tmp_path / "tree", 16)
    names, crops, out = _train_outputs(payloads, fused=True)
    assert names == list(FUSED_TRAIN_STAGES) and out.shape == (16, 3, 224, 224)
    flipped = []
    for crop, got in zip(crops, out, strict=True):
        want = ((_torchvision(crop, 224) - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
        errors = [np.abs(got - want).max(), np.abs(got - want[:, :, ::-1]).max()]
        assert min(errors) < 1e-3
        flipped.append(errors[1] < errors[0])
    assert 0 < sum(flipped) < len(flipped)
    assert _train_outputs(payloads, fused=False)[0] == list(TRAIN_STAGES)


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


PROBE = (
    "from dali_pipeline.pipelines import PipelineOptions\n"
    "print('fused' if PipelineOptions(batch_size=1).uses_fused_resize else 'dali')\n"
    "print('fused' if PipelineOptions(batch_size=1).uses_fused_resize else 'dali')\n"
)


def test_without_a_compiler_the_graph_falls_back_and_warns_once_naming_why(tmp_path: Path) -> None:
    done = _python(PROBE, {"CXX": str(tmp_path / "no-such-c++"), "LMDB_DALI_TRAIN_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["dali", "dali"]
    warned = [line for line in done.stderr.splitlines() if "fused CPU resize not used" in line]
    assert len(warned) == 1 and "no-such-c++" in warned[0], done.stderr


def test_switched_off_it_falls_back_silently(tmp_path: Path) -> None:
    done = _python(PROBE, {"LMDB_DALI_FUSED_RESIZE": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["dali", "dali"] and "fused" not in done.stderr


@pytest.mark.slow  # two compilers at once
def test_concurrent_first_builds_compile_once_and_agree(tmp_path: Path) -> None:
    """Ranks that start together on an empty cache: one compiles, the others wait and load the same file."""
    env = {**os.environ, "LMDB_DALI_TRAIN_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "dali_pipeline.fused_resize"]
    runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    paths = {line.split()[2] for line in outputs}
    assert len(paths) == 1
    built = list((tmp_path / "cache").rglob("*.so"))
    assert [str(p) for p in built] == list(paths)


def test_missing_headers_name_the_header_and_the_pip_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    from dali_pipeline import fused_resize

    monkeypatch.setattr(fused_resize, "_include_candidates", lambda: [])
    monkeypatch.setattr(fused_resize, "_dali_cuda", lambda: 130)
    assert fused_resize.header_packages() == list(fused_resize.HEADER_PACKAGES[130])
    with pytest.raises(fused_resize.Unavailable, match=r"no CUDA header cuda_runtime_api.h .*nvidia-cuda-crt"):
        fused_resize.header_dirs()
