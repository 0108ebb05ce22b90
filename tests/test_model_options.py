"""The model and optimiser options of FFCV's ImageNet recipe: --blurpool, --no-bn-weight-decay, --opt adamw,
and a resume that refuses a checkpoint built with other ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmdb_dali_train.architectures import build_model
from lmdb_dali_train.blurpool import BlurPoolConv2d, add_blurpool
from lmdb_dali_train.config import OptimConfig, RunConfig
from lmdb_dali_train.distributed import Placement
from lmdb_dali_train.engine import TrainState
from lmdb_dali_train.errors import ConfigError
from lmdb_dali_train.flags import parse_args
from lmdb_dali_train.model import BATCH_NORMS, build_state

ONE = Placement(0, 1, 0)
CPU = torch.device("cpu")

# FFCV's train_imagenet.py (create_model_and_scaler's apply_blurpool) wraps each Conv2d with a stride over 1
# and in_channels >= 16: in torchvision's resnet18, the first block of layer2-4 (strided 3x3 and 1x1 shortcut)
RESNET18_BLURRED = [f"layer{n}.0.{conv}" for n in (2, 3, 4) for conv in ("conv1", "downsample.0")]
RESNET50_BLURRED = [f"layer{n}.0.{conv}" for n in (2, 3, 4) for conv in ("conv2", "downsample.0")]


def _config(*extra: str) -> RunConfig:
    return RunConfig.from_args(parse_args(["--synthetic", "-a", "resnet18", "--epochs", "2", *extra]))


def _state(*extra: str) -> TrainState:
    return build_state(_config(*extra), ONE, CPU, num_classes=3, steps_per_epoch=4)


def _blurred(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BlurPoolConv2d)]


@pytest.mark.parametrize("arch, expected", [("resnet18", RESNET18_BLURRED), ("resnet50", RESNET50_BLURRED)])
def test_blurpool_wraps_the_strided_convolutions_ffcv_wraps(arch: str, expected: list[str]) -> None:
    model = build_model(arch, num_classes=5)
    add_blurpool(model)
    assert _blurred(model) == expected
    assert _blurred(build_model(arch, num_classes=5)) == []
    assert isinstance(model.conv1, nn.Conv2d)  # the RGB stem (3 input channels) stays as it is
    keys = model.state_dict().keys()
    assert f"{expected[0]}.blur_filter" in keys and f"{expected[0]}.conv.weight" in keys  # FFCV's names


def test_blurpool_keeps_the_output_shape_and_blurs_before_the_convolution() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=7)
    add_blurpool(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        block = model.layer2[0].conv1
        assert isinstance(block, BlurPoolConv2d)
        features = torch.randn(1, block.conv.in_channels, 16, 16)
        binomial = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        per_channel = binomial.expand(block.conv.in_channels, 1, 3, 3)
        blurred = F.conv2d(features, per_channel, padding=1, groups=block.conv.in_channels)
        assert torch.allclose(block(features), block.conv(blurred), atol=1e-6)
        assert block(features).shape == block.conv(features).shape


def test_blurpool_only_for_resnets() -> None:
    assert _config("--blurpool").optim.blurpool
    for arch in ("resnext50_32x4d", "wide_resnet50_2", "resnet50"):
        assert _config("-a", arch, "--blurpool").optim.blurpool
    with pytest.raises(ConfigError, match="--blurpool applies to torchvision ResNets .*not --arch vit_b_16"):
        _config("-a", "vit_b_16", "--blurpool")


def test_blurpool_trains_a_step() -> None:
    state = _state("--blurpool", "-b", "2")
    assert _blurred(state.module) == RESNET18_BLURRED
    loss = state.criterion(state.model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 2]))
    loss.backward()
    state.optimizer.step()
    assert all(m.blur_filter.grad is None for m in state.module.modules() if isinstance(m, BlurPoolConv2d))


def test_weight_decay_by_default_is_one_group_on_every_parameter() -> None:
    state = _state("--wd", "5e-5")
    (group,) = state.optimizer.param_groups
    assert group["weight_decay"] == 5e-5 and len(group["params"]) == len(list(state.module.parameters()))


def test_no_bn_weight_decay_splits_batch_norm_from_the_rest() -> None:
    state = _state("--wd", "5e-5", "--no-bn-weight-decay", "--blurpool")
    decayed, exempt = state.optimizer.param_groups
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (5e-5, 0.0)
    named = dict(state.module.named_parameters())
    names = {id(p): n for n, p in named.items()}
    norms = [n for n, m in state.module.named_modules() if isinstance(m, BATCH_NORMS)]
    assert len(norms) == 20  # every BatchNorm2d of resnet18, the shortcuts' (downsample.1) included
    assert sorted(names[id(p)] for p in exempt["params"]) == sorted(
        f"{n}.{w}" for n in norms for w in ("weight", "bias")
    )
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert {"conv1.weight", "layer2.0.conv1.conv.weight", "fc.weight", "fc.bias"} <= decayed_names
    assert len(decayed["params"]) + len(exempt["params"]) == len(named)


def test_no_bn_weight_decay_keeps_two_groups_on_a_model_without_batch_norm() -> None:
    config = RunConfig.from_args(parse_args(["--synthetic", "-a", "squeezenet1_1", "--no-bn-weight-decay"]))
    state = build_state(config, ONE, CPU, num_classes=3, steps_per_epoch=4)
    assert [len(g["params"]) > 0 for g in state.optimizer.param_groups] == [True, False]


def test_adamw_builds_with_decoupled_weight_decay_and_the_schedule() -> None:
    state = _state("--opt", "adamw", "--lr", "0.00025", "--wd", "0.05", "-b", "64", "--no-bn-weight-decay")
    assert isinstance(state.optimizer, torch.optim.AdamW)
    decayed, exempt = state.optimizer.param_groups
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.05, 0.0)
    assert decayed["initial_lr"] == pytest.approx(0.00025 * 64 / 256)
    loss = state.criterion(state.model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    assert isinstance(_state().optimizer, torch.optim.SGD)
    with pytest.raises(ConfigError, match="--opt lamb: one of sgd, adamw"):
        OptimConfig(opt="lamb")  # a configuration file's value: the parser's choices do not check it


@pytest.mark.parametrize(
    "saved, resumed, message",
    [
        (["--blurpool"], [], "trained with --blurpool; resume with it"),
        ([], ["--blurpool"], "trained without --blurpool"),
        (["--no-bn-weight-decay"], [], "trained with --no-bn-weight-decay"),
        (["--opt", "adamw"], [], "trained with --opt adamw, not --opt sgd"),
    ],
)
def test_resume_refuses_a_checkpoint_built_with_other_options(
    tmp_path: Path, saved: list[str], resumed: list[str], message: str
) -> None:
    from lmdb_dali_train.resume import restore, save
    from lmdb_dali_train.runlog import RunLog

    first = _config(*saved, "--output-dir", str(tmp_path))
    save(build_state(first, ONE, CPU, num_classes=3, steps_per_epoch=4), first, None, ONE)
    (path,) = tmp_path.glob("checkpoint-*.pt")
    with pytest.raises(ConfigError, match=message):
        restore(_state(*resumed), str(path), None, False, RunLog(str(tmp_path), enabled=False))
    same = _state(*saved)
    restore(same, str(path), None, False, RunLog(str(tmp_path), enabled=False))  # the same options resume
    assert len(same.optimizer.param_groups) == (2 if "--no-bn-weight-decay" in saved else 1)
