"""bench.stages cuts the product's train graph after each stage: each cut must end where its name says (the
shapes and types of that stage's output), the last cut must be the train graph itself, and a stage's cost
is what its cut adds to the one before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import needs_dali, needs_fused_resize

from bench import stages
from lmdb_io.demo_images import make_image_folder


def _jpegs(root: Path, count: int) -> list[np.ndarray]:
    make_image_folder(str(root), classes=1, per_class=count)
    return [np.fromfile(f, np.uint8) for f in sorted(root.rglob("*.jpg"))][:count]


def _cut_outputs(tmp_path: Path, fused: bool, reference: bool = True) -> tuple[list[str], dict[str, np.ndarray]]:
    """Each cut's name, in order, and its first batch's images (crops stay per-sample arrays)."""
    cuts = stages.build_cuts(_jpegs(tmp_path / "tree", 8), batch=4, threads=1, fused=fused, reference=reference)
    out = {name: pipe.run()[0] for name, pipe in cuts.items()}
    return list(cuts), {name: [np.asarray(batch[i]) for i in range(4)] for name, batch in out.items()}


@needs_dali
def test_each_cut_ends_at_its_stage(tmp_path: Path) -> None:
    from dali_pipeline.pipelines import TRAIN_STAGES

    names, out = _cut_outputs(tmp_path, fused=False)
    assert names == [stages.REFERENCE, *TRAIN_STAGES]
    full, crops = out[stages.REFERENCE], out["crop decode"]
    assert all(c.dtype == np.uint8 and c.shape[2] == 3 for c in crops)
    assert all(c.shape[0] * c.shape[1] <= f.shape[0] * f.shape[1] for c, f in zip(crops, full, strict=True))
    resized = np.stack(out["resize"])
    assert resized.dtype == np.uint8 and resized.shape == (4, 224, 224, 3)
    normalized = np.stack(out["flip + normalize"])
    assert normalized.dtype == np.float32 and normalized.shape == (4, 3, 224, 224) and normalized.min() < 0


@needs_fused_resize
def test_fused_graph_cuts_after_decode_and_after_the_fused_operator(tmp_path: Path) -> None:
    from dali_pipeline.pipelines import FUSED_TRAIN_STAGES

    names, out = _cut_outputs(tmp_path, fused=True, reference=False)
    assert names == list(FUSED_TRAIN_STAGES)
    assert all(c.dtype == np.uint8 and c.shape[2] == 3 for c in out["crop decode"])
    fused = np.stack(out[FUSED_TRAIN_STAGES[-1]])
    assert fused.dtype == np.float32 and fused.shape == (4, 3, 224, 224) and fused.min() < 0


def test_stage_cost_is_what_a_cut_adds_to_the_previous_one() -> None:
    timed = {
        "cuts": {
            stages.REFERENCE: {"rate": [100.0], "cpu_us": [300.0]},
            "crop decode": {"rate": [200.0], "cpu_us": [200.0]},
            "resize": {"rate": [120.0], "cpu_us": [500.0]},
            "flip + normalize": {"rate": [100.0], "cpu_us": [600.0]},
        }
    }
    rows = stages.rows_for("set", timed, "how")
    assert [r.ratio for r in rows] == [
        "300 us/image (50% of the train graph's)",
        "+200 us/image (33% of the graph)",
        "+300 us/image (50% of the graph)",
        "+100 us/image (17% of the graph)",
    ]
    assert [r.rate for r in rows] == [100.0, 200.0, 120.0, 100.0]


@pytest.mark.parametrize("argv", [["--images", "0"], ["--images", "8", "--batch", "16"]])
def test_bad_sizes_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        stages.main(argv)
    assert e.value.code == 2
