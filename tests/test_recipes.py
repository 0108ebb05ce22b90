"""The recipes in configs/: each loads, names only this trainer's fields, builds a RunConfig, says what
FFCV published for it, and follows FFCV's ImageNet recipe (github.com/libffcv/ffcv-imagenet): its learning
rate at every step and its training resolution at every epoch, computed from the file through this
trainer's code, equal those of a re-implementation of FFCV's train_imagenet.py, and every other setting is
the one in FFCV's rn50_configs/ and rn18_configs/ files."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import NO_DALI, REPO, convert
from test_resolution import ffcv_get_resolution  # FFCV's get_resolution, as published

from lmdb_dali_train import flags
from lmdb_dali_train.config import DataConfig, DistConfig, OptimConfig, RunConfig, RunControl
from lmdb_dali_train.config_file import read_flags
from lmdb_dali_train.model import build_schedule
from lmdb_io.reading.plan import RankPlan

CONFIGS = REPO / "configs"
SECTIONS = {"data": DataConfig, "optim": OptimConfig, "run": RunControl, "dist": DistConfig}
IMAGENET_TRAIN = 1_281_167
EPOCHS = (16, 24, 32, 40, 56, 88)

# FFCV's rn50_configs/rn50_<E>_epochs.yaml and rn18_configs/rn18_<E>_epochs.yaml: what differs by model
# (lr_peak_epoch is not set in them: train_imagenet.py's default, 2)
FFCV_MODEL = {
    "rn50": dict(arch="resnet50", lr=1.7, batch_size=512, world_size=8, weight_decay=1e-4, lr_peak_epoch=2),
    "rn18": dict(arch="resnet18", lr=0.5, batch_size=1024, world_size=1, weight_decay=5e-5, lr_peak_epoch=2),
}
# ... and by epochs: the resolution section (min_res 160, max_res 192 in all), (start_ramp, end_ramp)
FFCV_RAMP = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}
# FFCV's README table: (top_1, top_5, minutes), ResNet-50 on 8 x A100, ResNet-18 on 1 x A100
FFCV_README = {
    ("rn50", 88): (0.784, 0.941, 77.2),
    ("rn50", 56): (0.780, 0.937, 49.4),
    ("rn50", 40): (0.772, 0.932, 35.6),
    ("rn50", 32): (0.766, 0.927, 28.7),
    ("rn50", 24): (0.756, 0.921, 21.7),
    ("rn50", 16): (0.738, 0.908, 14.9),
    ("rn18", 88): (0.724, 0.903, 187.3),
    ("rn18", 56): (0.713, 0.899, 119.4),
    ("rn18", 40): (0.706, 0.894, 85.5),
    ("rn18", 32): (0.700, 0.889, 68.9),
    ("rn18", 24): (0.688, 0.881, 51.6),
    ("rn18", 16): (0.669, 0.868, 35.0),
}
RECIPES = [(model, epochs) for model in FFCV_MODEL for epochs in EPOCHS]


# -- FFCV's train_imagenet.py, re-implemented ------------------------------------------------------


def ffcv_get_cyclic_lr(epoch: float, lr: float, epochs: int, lr_peak_epoch: int) -> float:
    """get_cyclic_lr: np.interp([epoch], [0, lr_peak_epoch, epochs], [1e-4 * lr, lr, 0])."""
    return float(np.interp([epoch], [0, lr_peak_epoch, epochs], [1e-4 * lr, lr, 0])[0])


def ffcv_step_lr(epoch: int, ix: int, iters: int, **cfg: Any) -> float:
    """train_loop: the iteration's lr, np.interp(np.arange(iters), [0, iters], [get_lr(epoch), get_lr(epoch + 1)])."""
    start, end = ffcv_get_cyclic_lr(epoch, **cfg), ffcv_get_cyclic_lr(epoch + 1, **cfg)
    return float(np.interp(ix, [0, iters], [start, end]))


# -- loading a recipe -----------------------------------------------------------------------------


def _recipe(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def _ffcv_name(model: str, epochs: int) -> str:
    return f"ffcv_{model}_{epochs}_epochs"


def load_fields(path: Path) -> dict[str, Any]:
    """The file's fields, flat; each must be a field of its section (or of one, for a top-level key) and of
    the type of the parser's default (YAML reads 1e-4 as a string: write 0.0001)."""
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    known = {name: {f.name for f in dataclasses.fields(kind) if f.init} for name, kind in SECTIONS.items()}
    fields: dict[str, Any] = {}
    for key, value in loaded.items():
        if key in SECTIONS:
            assert isinstance(value, dict), (path.name, key)
            unknown = set(value) - known[key]
            assert not unknown, f"{path.name}: not fields of the {key} section: {sorted(unknown)}"
            fields.update(value)
        else:
            assert any(key in names for names in known.values()), f"{path.name}: unknown field {key}"
            fields[key] = value
    defaults = vars(flags.parse_args([]))
    for key, value in fields.items():
        default = defaults[key]
        if isinstance(default, bool):
            assert isinstance(value, bool), (path.name, key, value)
        elif isinstance(default, float):
            assert isinstance(value, int | float) and not isinstance(value, bool), (path.name, key, value)
        elif default is not None:
            assert isinstance(value, type(default)), (path.name, key, value)
    return fields


def build_config(path: Path, data: Path) -> RunConfig:
    """The RunConfig train.py builds from ``--config path`` with --train/--val given on its command line."""
    load_fields(path)  # its structure and types, checked field by field
    return RunConfig.from_args(read_flags(["--config", str(path), "--train", str(data), "--val", str(data)]).values)


@pytest.fixture(scope="module")
def fake_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that passes for a database at configuration time (holds data.mdb)."""
    path = tmp_path_factory.mktemp("recipes") / "imagenet.lmdb"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"")
    return path


def _nproc(path: Path) -> int:
    """The process count of the file's own command line (its header comment)."""
    found = re.findall(
        r"torchrun --nproc-per-node (\d+) train\.py --config configs/" + re.escape(path.name), path.read_text()
    )
    assert len(found) == 1, f"{path.name}: its header must give the torchrun command that runs it"
    return int(found[0])


# -- the tests -------------------------------------------------------------------------------------


def test_the_recipes_are_ffcvs_twelve_and_the_smoke_run() -> None:
    expected = {_ffcv_name(m, e) + ".yaml" for m, e in RECIPES} | {"smoke_cpu.yaml"}
    assert {p.name for p in CONFIGS.glob("*.yaml")} == expected


@pytest.mark.parametrize("model, epochs", RECIPES)
def test_a_recipe_states_ffcvs_published_result_and_how_to_run_it(model: str, epochs: int) -> None:
    path = _recipe(_ffcv_name(model, epochs))
    header = path.read_text().split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines())
    top1, top5, minutes = FFCV_README[model, epochs]
    gpus = FFCV_MODEL[model]["world_size"]
    assert f"top-1 {100 * top1:.1f}%, top-5 {100 * top5:.1f}% in {minutes} minutes" in " ".join(header.split())
    assert f"{gpus} x A100" in header
    assert _nproc(path) == gpus
    assert "--train " in header and "--val " in header


@pytest.mark.parametrize("model, epochs", RECIPES)
def test_a_recipe_is_ffcvs_configuration(model: str, epochs: int, fake_db: Path) -> None:
    path = _recipe(_ffcv_name(model, epochs))
    config = build_config(path, fake_db)
    ffcv = FFCV_MODEL[model]
    optim, data = config.optim, config.data
    assert optim.global_batch(_nproc(path)) == ffcv["batch_size"] * ffcv["world_size"]
    assert (optim.arch, optim.epochs, optim.opt, optim.momentum) == (ffcv["arch"], epochs, "sgd", 0.9)
    assert optim.wd == ffcv["weight_decay"] and optim.label_smoothing == 0.1
    assert optim.no_bn_weight_decay and optim.blurpool and data.val_tta  # bn_wd 0, use_blurpool 1, lr_tta
    assert (data.lmdb, data.loader) == (True, "dali")
    # validation.resolution 256 from CenterCropRGBImageDecoder((256, 256), ratio=DEFAULT_CROP_RATIO = 224/256):
    # the center int(224/256 * shorter side) square resized to 256; here the shorter side resized, then a
    # center 256 crop: the nearest integer resize
    assert data.val_crop == 256
    assert data.val_resize == round(256 / (224 / 256))
    assert abs(data.val_crop / data.val_resize - 224 / 256) < 0.002


@pytest.mark.parametrize("model, epochs", RECIPES)
def test_a_recipes_schedule_is_ffcvs(model: str, epochs: int, fake_db: Path) -> None:
    """The lr of every epoch's first, middle and last steps, and the resolution of every epoch, as this
    trainer computes them from the file (model.build_schedule, schedule.SamplesLR, config's
    ResolutionSchedule), against FFCV's get_cyclic_lr / train_loop / get_resolution on ImageNet's size."""
    path = _recipe(_ffcv_name(model, epochs))
    config = build_config(path, fake_db)
    ffcv = FFCV_MODEL[model]
    world = _nproc(path)
    iters = RankPlan(IMAGENET_TRAIN, config.optim.batch_size, world_size=world).num_batches(0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.scaled_lr(world))
    schedule = build_schedule(optimizer, config.optim, world, iters)
    g = schedule.global_batch
    cyclic = dict(lr=ffcv["lr"], epochs=epochs, lr_peak_epoch=ffcv["lr_peak_epoch"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ffcv_step_lr(0, 0, iters, **cyclic), rel=1e-9)
    ours, theirs = [], []
    for epoch in range(epochs):
        for ix in (0, 1, iters // 2, iters - 1):
            ours.append(schedule.base_lrs[0] * schedule.factor((epoch * iters + ix) * g))
            theirs.append(ffcv_step_lr(epoch, ix, iters, **cyclic))
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    start, end = FFCV_RAMP[epochs]
    assert config.data.resolution is not None
    sizes = [config.data.resolution.for_epoch(e) for e in range(epochs)]
    assert sizes == [ffcv_get_resolution(e, 160, 192, end, start) for e in range(epochs)]


def test_the_ffcv_schedules_by_hand() -> None:
    """Two of them written out: ResNet-50 for 16 epochs on 8 x 512 (312 steps an epoch) peaks at 1.7 after 2
    epochs, trains at 160 px up to epoch 11 and 192 px from epoch 12 (176 / 32 = 5.5 rounds to 6)."""
    assert [ffcv_get_resolution(e, 160, 192, 13, 11) for e in range(16)] == [160] * 12 + [192] * 4
    # 88 epochs: the ramp's 65-75 round to 160 up to epoch 70 (174.5 px), to 192 from 71 (177.5 px)
    assert [ffcv_get_resolution(e, 160, 192, 76, 65) for e in range(64, 78)] == [160] * 7 + [192] * 7
    assert RankPlan(IMAGENET_TRAIN, 512, world_size=8).num_batches(0) == 312
    assert ffcv_step_lr(2, 0, 312, lr=1.7, epochs=16, lr_peak_epoch=2) == pytest.approx(1.7)
    assert ffcv_step_lr(0, 0, 312, lr=1.7, epochs=16, lr_peak_epoch=2) == pytest.approx(1.7e-4)


def test_the_smoke_recipe_builds_a_cpu_configuration(fake_db: Path) -> None:
    config = build_config(_recipe("smoke_cpu"), fake_db)
    assert config.run.device == "cpu" and not config.cuda
    assert config.optim.arch == "resnet18" and config.optim.epochs <= 10 and config.data.val_crop <= 128
    assert config.optim.blurpool and config.optim.no_bn_weight_decay and config.data.val_tta


# -- the smoke recipe learns ------------------------------------------------------------------------------

SMOKE_MARGIN = 15.0  # points of val top-1 the two loaders may differ by: same data, same schedule, each its own crops


@pytest.mark.slow
def test_the_smoke_recipe_learns_with_both_loaders(tmp_path: Path) -> None:
    """configs/smoke_cpu.yaml on the demo's generated data (4 classes: chance is 25%), as its header says
    to run it: both loaders end well above chance, within SMOKE_MARGIN of each other."""
    from lmdb_io.demo_images import make_image_folder

    make_image_folder(str(tmp_path / "train"), classes=4, per_class=60, seed=0)
    make_image_folder(str(tmp_path / "val"), classes=4, per_class=20, seed=1)
    convert(tmp_path / "train", tmp_path / "train.lmdb")
    convert(tmp_path / "val", tmp_path / "val.lmdb", "--classes-from", str(tmp_path / "train.lmdb"))
    loaders = ["torch"] + ([] if NO_DALI else ["dali"])
    top1 = {}
    for loader in loaders:
        out = tmp_path / f"run-{loader}"
        data = ["--train", str(tmp_path / "train.lmdb"), "--val", str(tmp_path / "val.lmdb"), "--loader", loader]
        cmd = [sys.executable, "train.py", "--config", "configs/smoke_cpu.yaml", *data, "--output-dir", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
        events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        top1[loader] = [e for e in events if e["event"] == "val"][-1]["top1"]
    assert all(value > 60.0 for value in top1.values()), top1
    assert max(top1.values()) - min(top1.values()) <= SMOKE_MARGIN, top1
