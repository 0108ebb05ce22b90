"""--arch and --weights: torchvision or timm models, fine-tuning from a local state dict (the classifier
head re-initialised when the class count differs); every mistake one line. No test downloads weights:
the files are made here."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import assert_one_line_error, run_main

from lmdb_dali_train.architectures import build_model, check_arch, load_weights
from lmdb_dali_train.errors import ConfigError
from lmdb_dali_train.main import main


def _saved(tmp_path: Path, arch: str = "resnet18", num_classes: int = 1000, checkpoint: bool = False) -> Path:
    torch.manual_seed(1)
    state = torchvision.models.get_model(arch, num_classes=num_classes).state_dict()
    path = tmp_path / f"{arch}-{num_classes}.pt"
    torch.save({"model": state} if checkpoint else state, path)
    return path


@pytest.mark.parametrize("checkpoint", [False, True])
def test_weights_load_and_another_class_count_gets_a_fresh_head(tmp_path: Path, checkpoint: bool) -> None:
    path = _saved(tmp_path, checkpoint=checkpoint)
    saved = torch.load(path, weights_only=True)
    saved = saved["model"] if checkpoint else saved
    torch.manual_seed(2)
    model = build_model("resnet18", 3)
    fresh_fc = model.fc.weight.detach().clone()
    said = load_weights(model, str(path))
    assert torch.equal(model.conv1.weight, saved["conv1.weight"]) and torch.equal(
        model.layer4[1].bn2.bias, saved["layer4.1.bn2.bias"]
    )
    assert model.fc.weight.shape == (3, 512) and torch.equal(model.fc.weight, fresh_fc)
    assert "classifier head (fc) re-initialised: 1000 classes there, 3 here" in said


def test_the_same_class_count_loads_every_weight(tmp_path: Path) -> None:
    path = _saved(tmp_path, num_classes=3)
    model = build_model("resnet18", 3)
    assert load_weights(model, str(path)) == f"weights from {path.name}"
    assert torch.equal(model.fc.weight, torch.load(path, weights_only=True)["fc.weight"])


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit this model .* is --arch the model"):
        load_weights(build_model("resnet18", 3), str(_saved(tmp_path, arch="resnet34")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(ConfigError, match="junk.pt: not a torch state dict"):
        load_weights(build_model("resnet18", 3), str(junk))


def test_train_py_fine_tunes_from_weights(tmp_path: Path) -> None:
    path = _saved(tmp_path, num_classes=10)
    argv = ["--synthetic", "-a", "resnet18", "--crop-size", "32", "-b", "2", "--device", "cpu", "--max-steps", "1"]
    result = run_main(main, *argv, "--weights", str(path), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classifier head (fc) re-initialised: 10 classes there, 1000 here" in result.stdout
    missing = run_main(main, *argv, "--weights", str(tmp_path / "nope.pt"), "--output-dir", str(tmp_path / "r2"))
    assert_one_line_error(missing, "--weights", "nope.pt: no such file")


def test_timm_architectures_need_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm fails, installed or not
    with pytest.raises(ConfigError, match="timm is not installed"):
        check_arch("timm/resnet18")


def test_timm_architectures_come_from_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring, through a stand-in for timm's two functions (timm itself is an optional extra)."""
    made: list[tuple[str, bool, int]] = []

    def create_model(name: str, pretrained: bool, num_classes: int) -> torch.nn.Module:
        made.append((name, pretrained, num_classes))
        return torch.nn.Linear(4, num_classes)

    stand_in = types.SimpleNamespace(__version__="0", is_model=lambda name: name == "tiny", create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", stand_in)
    check_arch("timm/tiny")
    with pytest.raises(ConfigError, match="has no model 'huge'"):
        check_arch("timm/huge")
    assert isinstance(build_model("timm/tiny", 7), torch.nn.Linear) and made == [("tiny", False, 7)]


def test_an_unknown_torchvision_name_is_one_line() -> None:
    with pytest.raises(ConfigError, match="--arch resnet19: not a torchvision classification model .* nor timm/NAME"):
        check_arch("resnet19")
