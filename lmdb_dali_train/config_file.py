"""Where a run's flags come from, highest first: the command line, ``--config FILE.yaml``, the checkpoint
a run resumes, the parser's defaults.

A configuration file holds the flags' names with underscores (``batch_size: 256``), flat or under the
run configuration's sections (``data``, ``optim``, ``run``, ``dist``); the command line overrides it. A
resumed run takes its configuration from its checkpoint, so ``--resume`` needs nothing retyped; a flag
given again that contradicts the checkpoint is refused, unless it is one a run may change between
sessions (paths, workers, print frequency, batch size, ...).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import ConfigError
from .flags import DATA, DISTRIBUTED, OPTIMISATION, RUN, build_parser

SECTION_OF_GROUP = {DATA: "data", OPTIMISATION: "optim", RUN: "run", DISTRIBUTED: "dist"}
META = {"help", "version", "config"}  # flags about the flags: not part of the run's configuration

# never taken from a checkpoint: what this invocation asks for, and how it is launched
PER_INVOCATION = {"resume", "force_resume", "evaluate", "max_steps", "weights"} | {
    "multiprocessing_distributed",
    "procs_per_node",
    "world_size",
    "rank",
    "dist_url",
    "dist_backend",
    "dist_timeout",
}
# may differ from the checkpoint's: where things are, how fast they are read, what is logged
CHANGEABLE = {
    "train",
    "val",
    "output_dir",
    "workers",
    "dali_threads",
    "hw_decoder_load",
    "loader",
    "print_freq",
    "log_keys",
    "max_bad_records",
    "device",
    "compile",
    "batch_size",  # a resume on another batch rescales the lr and goes on by samples seen
    "keep_checkpoints",
    "save_every",  # how often a run saves: no effect on training
    "save_every_minutes",
    "val_resize",  # how validation measures: no effect on training
    "val_crop_size",
    "val_tta",
}


@dataclass(frozen=True)
class Flags:
    """Parsed flags, and which of them the user set (on the command line or in ``--config``)."""

    values: argparse.Namespace
    given: frozenset[str]


def read_flags(argv: Sequence[str] | None = None) -> Flags:
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = read_config_file(args.config, parser) if args.config else {}
    if from_file:
        parser.set_defaults(**from_file)
        args = parser.parse_args(argv)
    return Flags(args, frozenset(from_file) | _given_on_command_line(argv))


def _given_on_command_line(argv: Sequence[str] | None) -> frozenset[str]:
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return frozenset(vars(quiet.parse_args(argv))) - META


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The flags a YAML file sets, each checked as its flag would be; ConfigError naming the file and key."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}{f' line {where.line + 1}' if where else ''}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected flag names and values (batch_size: 256, ...), not a {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in META}
    section_of = {
        action.dest: SECTION_OF_GROUP[group.title]
        for group in parser._action_groups
        if group.title in SECTION_OF_GROUP
        for action in group._group_actions
    }
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTION_OF_GROUP.values() and isinstance(value, Mapping):
            for name, inner in value.items():
                if section_of.get(name) != key:
                    where = f"belongs under {section_of[name]}" if name in section_of else "is not a train.py flag"
                    raise ConfigError(f"{path}: unknown key {key}.{name} ({name} {where})")
                values[name] = inner
        elif key in actions:
            values[key] = value
        else:
            raise ConfigError(
                f"{path}: unknown key {key!r} (keys are train.py's flags with underscores, e.g. batch_size, "
                f"flat or under data/optim/run/dist)"
            )
    return {name: _checked(path, actions[name], value) for name, value in values.items()}


def _checked(path: str, action: argparse.Action, value: Any) -> Any:
    """``value`` as the flag's own parsing would give it."""
    what = f"{path}: {action.dest}"
    if action.nargs == 0:  # a switch (store_true)
        if not isinstance(value, bool):
            raise ConfigError(f"{what}: expected true or false, not {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise ConfigError(f"{what}: needs a value")
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{what}: expected one value, not a {type(value).__name__}")
    if action.type is not None:
        try:
            value = action.type(value if not isinstance(value, bool) else str(value))  # type: ignore[operator]
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", "value")
            raise ConfigError(f"{what}: expected {'an' if name == 'int' else 'a'} {name}, not {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def under_checkpoint(flags: Flags, saved: Mapping[str, Any], checkpoint: str) -> argparse.Namespace:
    """The flags of a run resumed from ``checkpoint``, whose flags were ``saved``: the checkpoint's, except
    what this invocation asks for, and the changeable ones the user gave. The run's folder is the one
    holding the checkpoint unless ``--output-dir`` says otherwise."""
    values = dict(vars(flags.values))
    if "output_dir" not in flags.given:
        values["output_dir"] = os.path.dirname(os.path.abspath(checkpoint))
    for name, old in saved.items():
        if name not in values or name in PER_INVOCATION or name == "output_dir":
            continue
        if name == "train" and values["evaluate"]:
            continue  # evaluation reads --val only
        if name not in flags.given:
            values[name] = old
        elif values[name] != old and name not in CHANGEABLE:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {values[name]} contradicts {checkpoint}, trained with {flag} {old}: drop the flag to "
                f"continue that run, or start a new run in another --output-dir"
            )
    return argparse.Namespace(**values)
