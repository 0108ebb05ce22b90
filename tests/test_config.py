"""The run configuration: every flag is one field of the section of its parser group (so a configuration
file and the flags name the same fields), the values derived from the flags are computed once, nothing
changes a built configuration, and the trainer's modules below it never see the argparse namespace. And
every exit code is defined once and listed in the README."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

from lmdb_dali_train import flags
from lmdb_dali_train.config import DataConfig, DistConfig, OptimConfig, RunConfig, RunControl
from lmdb_dali_train.config_file import META
from lmdb_dali_train.errors import ConfigError
from lmdb_dali_train.exit_codes import ExitCode

SECTION_OF_GROUP = {
    flags.DATA: DataConfig,
    flags.OPTIMISATION: OptimConfig,
    flags.RUN: RunControl,
    flags.DISTRIBUTED: DistConfig,
}


def _config(*argv: str) -> RunConfig:
    return RunConfig.from_args(flags.parse_args(["--synthetic", *argv]))


def test_every_flag_is_a_field_of_its_groups_section() -> None:
    parser = flags.build_parser()
    by_group = {
        group.title: {a.dest for a in group._group_actions if a.dest not in META}
        for group in parser._action_groups
        if group.title in SECTION_OF_GROUP
    }
    assert set(by_group) == set(SECTION_OF_GROUP)
    for title, dests in by_group.items():
        fields = {f.name for f in dataclasses.fields(SECTION_OF_GROUP[title]) if f.init}
        assert dests == fields, (title, dests ^ fields)
    ungrouped = {a.dest for a in parser._actions if a.dest not in META} - set().union(*by_group.values())
    assert not ungrouped


def test_defaults_agree_with_the_parser() -> None:
    """A section built without flags holds the parser's defaults: a file naming no key changes nothing."""
    defaults = vars(flags.parse_args([]))
    for section in SECTION_OF_GROUP.values():
        for f in dataclasses.fields(section):
            if f.init:
                assert f.default == defaults[f.name], (section.__name__, f.name)


def test_a_built_configuration_cannot_change() -> None:
    config = _config("-b", "8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.batch_size = 16  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data = config.data  # type: ignore[misc]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's resolution of --amp")
def test_derived_values_are_resolved_once_on_the_cpu() -> None:
    config = _config()
    assert (config.cuda, config.amp, config.amp_dtype, config.image_dtype) == (False, "off", None, torch.float32)
    bf16 = _config("--amp", "bf16")  # autocast on the CPU; the loaders still hand over float32
    assert (bf16.amp, bf16.amp_dtype, bf16.image_dtype) == ("bf16", torch.bfloat16, torch.float32)
    assert bf16.as_dict()["optim"]["amp"] == "bf16" and config.as_dict()["optim"]["amp"] is None
    with pytest.raises(ConfigError, match="--amp fp16 needs CUDA"):
        _config("--amp", "fp16")


def test_the_resolution_schedule_is_part_of_the_data_section(tmp_path: Path) -> None:
    assert _config().data.resolution is None
    ramp = ["--loader", "torch", "--min-res", "160", "--max-res", "192", "--start-ramp", "2", "--end-ramp", "4"]
    schedule = RunConfig.from_args(flags.parse_args([*ramp, "--train", str(tmp_path)])).data.resolution
    assert schedule is not None and [schedule.for_epoch(e) for e in (0, 2, 4, 9)] == [160, 160, 192, 192]
    assert "resolution" not in RunConfig.from_args(flags.parse_args(["--synthetic"])).as_dict()["data"]


def test_keep_checkpoints_is_a_run_control_flag() -> None:
    assert _config().run.keep_checkpoints == 2  # what was always kept
    assert _config("--keep-checkpoints", "3").run.keep_checkpoints == 3
    with pytest.raises(ConfigError, match="--keep-checkpoints must be positive"):
        _config("--keep-checkpoints", "0")


def test_as_dict_holds_every_flag_by_section() -> None:
    recorded = _config("-a", "resnet18", "--epochs", "3").as_dict()
    assert set(recorded) == {"data", "optim", "run", "dist"}
    assert recorded["optim"]["arch"] == "resnet18" and recorded["optim"]["epochs"] == 3
    assert sum(len(part) for part in recorded.values()) == len(set(vars(flags.parse_args([]))) - META)


def test_only_the_flags_and_config_modules_see_the_namespace() -> None:
    """Below the command line, the trainer passes the frozen configuration or its fields, never argparse's
    namespace (``cli`` is the database commands' own parser, ``plot`` the curves command's)."""
    allowed = {"flags.py", "config_file.py", "config.py", "cli.py", "plot.py"}  # plot: a command of its own
    users = [
        path.name
        for path in sorted((REPO / "lmdb_dali_train").rglob("*.py"))
        if path.name not in allowed and re.search(r"^\s*(import argparse|from argparse )", path.read_text(), re.M)
    ]
    assert not users


# -- exit codes ----------------------------------------------------------------------------------------


def _product_files() -> list[Path]:
    return [p for top in ("lmdb_io", "dali_pipeline", "lmdb_dali_train") for p in sorted((REPO / top).rglob("*.py"))]


def test_every_exit_code_is_defined_once() -> None:
    """No other module names an exit code of its own (``EXIT_...``), and no command returns a bare number."""
    defined = []
    for path in _product_files():
        if path.name == "exit_codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            defined += [f"{path.name}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id.startswith("EXIT")]
    assert not defined
    commands = [REPO / "lmdb_dali_train" / name for name in ("main.py", "cli.py")]
    bare = [
        f"{path.name}:{node.lineno}"
        for path in commands
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)
    ]
    assert not bare


def test_the_readme_lists_every_exit_code() -> None:
    section = (REPO / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    listed = {int(code) for row in re.findall(r"^\| ([\d, ]+) \|", section, re.M) for code in row.split(",")}
    assert listed == {int(code) for code in ExitCode}
