"""Validation as FFCV's ImageNet recipe runs it: at its own crop (--val-crop-size, in both loaders) and with
flip test-time augmentation (--val-tta)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import needs_dali
from torch import nn

from lmdb_dali_train.config import RunConfig
from lmdb_dali_train.data import make_loader
from lmdb_dali_train.distributed import Placement
from lmdb_dali_train.engine import TrainState, evaluate
from lmdb_dali_train.errors import ConfigError
from lmdb_dali_train.flags import parse_args
from lmdb_dali_train.loaders.batch import Batch

CPU = torch.device("cpu")


def _first_batch(config: RunConfig, path: Path, train: bool) -> torch.Tensor:
    loader = make_loader(config, str(path), train, place=Placement(0, 1, 0), device=CPU)
    try:
        return next(iter(loader)).images
    finally:
        loader.close()


@pytest.mark.parametrize(
    "loader, lmdb",
    [("torch", True), pytest.param("dali", True, marks=needs_dali), pytest.param("dali", False, marks=needs_dali)],
)
def test_val_crop_size_is_honoured_by_both_loaders(
    loader: str, lmdb: bool, train_db: Path, val_db: Path, tmp_path: Path
) -> None:
    if lmdb:
        train, val = train_db, val_db
    else:  # DALI's file reader on an ImageFolder tree of plain JPEGs
        from lmdb_io.demo_images import make_image_folder

        make_image_folder(str(tmp_path), classes=2, per_class=4)
        train = val = tmp_path
    flags = ["--loader", loader, "--train", str(train), "--val", str(val), "-b", "4", "--device", "cpu", "-j", "0"]
    flags += ["--dali-threads", "1", "--crop-size", "32", "--val-resize", "48"] + (["--lmdb"] if lmdb else [])
    config = RunConfig.from_args(parse_args([*flags, "--val-crop-size", "40"]))
    assert _first_batch(config, val, train=False).shape == (4, 3, 40, 40)
    assert _first_batch(config, train, train=True).shape == (4, 3, 32, 32)  # training keeps --crop-size
    default = RunConfig.from_args(parse_args(flags))
    assert default.data.val_crop == 32 and _first_batch(default, val, train=False).shape == (4, 3, 32, 32)


def test_val_crop_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="--val-crop-size must be positive"):
        RunConfig.from_args(parse_args(["--synthetic", "--val-crop-size", "0"]))


# -- --val-tta --------------------------------------------------------------------------------------


class HalfMean(nn.Module):
    """Two logits from the mean brightness of the image's left half (``left=True``: flipping the image changes
    them) or of the whole image (flip-invariant): [b, 1 - b]."""

    def __init__(self, left: bool) -> None:
        super().__init__()
        self.left = left

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        part = images[..., : images.shape[-1] // 2] if self.left else images
        b = part.mean(dim=(1, 2, 3))
        return torch.stack([b, 1 - b], dim=1)


class ListLoader:
    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def close(self) -> None:
        pass


def _images() -> ListLoader:
    """Images whose left and right halves differ: class 0 if the whole is bright (mean > 0.5), else 1. The
    left half alone gets images 2 and 4 wrong; the whole image, or left and mirrored left halves, none."""
    halves = [(1.0, 0.2), (0.9, 0.0), (0.0, 0.8), (0.3, 1.0)]  # (left, right): means 0.6, 0.45, 0.4, 0.65
    images = torch.stack([torch.cat([torch.full((3, 4, 2), le), torch.full((3, 4, 2), r)], dim=2) for le, r in halves])
    labels = torch.tensor([0, 1, 1, 0])
    return ListLoader([Batch(images, labels, torch.arange(4), torch.zeros(4, dtype=torch.bool))])


def _evaluate(model: nn.Module, tta: bool) -> dict[str, float]:
    state = TrainState(
        model=model,
        module=model,
        optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
        scheduler=None,  # type: ignore[arg-type]  # evaluate does not step it
        scaler=None,
        criterion=nn.CrossEntropyLoss(),
        device=CPU,
        amp_dtype=None,
        val_tta=tta,
    )
    metrics = evaluate(state, _images())
    assert metrics is not None
    return metrics


def test_val_tta_averages_the_outputs_on_the_image_and_its_mirror() -> None:
    lefty, whole = HalfMean(left=True), HalfMean(left=False)
    assert _evaluate(lefty, tta=False)["top1"] == 50.0
    assert _evaluate(whole, tta=False)["top1"] == 100.0
    # mean of the left half and of the mirrored left half (the right half) is the whole image's mean
    assert _evaluate(lefty, tta=True) == pytest.approx(_evaluate(whole, tta=False))
    # a flip-invariant model is unchanged by it
    assert _evaluate(whole, tta=True) == pytest.approx(_evaluate(whole, tta=False))


def test_val_tta_is_off_by_default_and_reaches_the_train_state() -> None:
    from lmdb_dali_train.model import build_state

    for flags, expected in (([], False), (["--val-tta"], True)):
        config = RunConfig.from_args(parse_args(["--synthetic", "-a", "resnet18", *flags]))
        assert config.data.val_tta is expected
        assert build_state(config, Placement(0, 1, 0), CPU, num_classes=2, steps_per_epoch=2).val_tta is expected
