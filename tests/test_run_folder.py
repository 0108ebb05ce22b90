"""Configuration files, one folder per run, and resuming or evaluating a run with nothing retyped: each
run here is train.py in this process (``main(argv)``), on synthetic batches unless a test needs data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_main

from lmdb_dali_train.config import RunConfig
from lmdb_dali_train.config_file import read_flags
from lmdb_dali_train.main import main
from lmdb_io import open_database

TINY = ["-a", "resnet18", "--crop-size", "32", "-b", "2", "--device", "cpu", "--print-freq", "1"]


def _events(folder: Path, kind: str | None = None) -> list[dict]:
    events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [e for e in events if kind is None or e["event"] == kind]


def _train(*argv: str):
    result = run_main(main, *argv)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    return result


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- configuration files ---------------------------------------------------------------------------------


def test_a_file_sets_flags_by_name_and_the_command_line_wins(tmp_path: Path) -> None:
    recipe = _write(
        tmp_path / "recipe.yaml",
        "optim:\n  arch: resnet18\n  batch_size: 4\n  lr: 2e-1\ncrop_size: 32\ndata:\n  synthetic: true\n",
    )
    flags = read_flags(["--config", str(recipe), "-b", "8"])
    config = RunConfig.from_args(flags.values)
    assert (config.optim.arch, config.optim.batch_size, config.optim.lr) == ("resnet18", 8, 0.2)
    assert (config.data.crop_size, config.data.synthetic) == (32, True)
    assert {"arch", "batch_size", "lr", "crop_size", "synthetic"} <= flags.given
    assert "epochs" not in flags.given  # a default stays a default


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("batchsize: 8\n", "unknown key 'batchsize'"),
        ("data:\n  lr: 0.1\n", "data.lr (lr belongs under optim)"),
        ("epochs: many\n", "epochs: expected an int"),
        ("loader: fast\n", "loader: 'fast' is not one of dali, torch"),
        ("synthetic: 1\n", "synthetic: expected true or false"),
        ("lr: [0.1\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected flag names and values"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    bad = _write(tmp_path / "bad.yaml", text)
    assert_one_line_error(run_main(main, "--config", str(bad), "--synthetic"), str(bad), fragment)


def test_a_missing_file_is_one_line() -> None:
    assert_one_line_error(run_main(main, "--config", "/nonexistent/recipe.yaml"), "--config /nonexistent/recipe.yaml")


# -- one folder per run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished") / "run"
    _train("--synthetic", *TINY, "--max-steps", "2", "--output-dir", str(folder))
    return folder


@pytest.fixture
def run_dir(finished_run: Path, tmp_path: Path) -> Path:
    """A finished 2-step synthetic run in its own folder (a copy of one, for each test)."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_the_run_folder_holds_its_configuration_which_reads_back(run_dir: Path) -> None:
    (start,) = _events(run_dir, "start")
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written == start["config"]
    again = RunConfig.from_args(read_flags(["--config", str(run_dir / "config.yaml")]).values)
    assert again.as_dict() == written


def test_a_fresh_run_never_writes_into_another_runs_folder(run_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    result = run_main(main, "--synthetic", *TINY, "--max-steps", "1", "--output-dir", str(run_dir))
    assert_one_line_error(result, f"--output-dir {run_dir} holds another run", "--resume auto")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # no log line, no checkpoint rotated


def test_unnamed_runs_get_folders_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = _train("--synthetic", *TINY, "--max-steps", "1")
    _train("--synthetic", *TINY, "--max-steps", "1")
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("resnet18-") for f in folders)
    assert all(len(_events(f, "start")) == 1 for f in folders)
    assert f"run folder {os.path.join('runs', folders[0].name)}" in first.stdout
    assert f"--resume auto --output-dir {os.path.join('runs', folders[0].name)}" in first.stdout


def test_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    blocker = _write(tmp_path / "a-file", "")
    result = run_main(main, "--synthetic", *TINY, "--max-steps", "1", "--output-dir", str(blocker / "run"))
    assert_one_line_error(result, f"--output-dir {blocker / 'run'}: cannot write there")


# -- resume and evaluate with nothing retyped ---------------------------------------------------------------


def test_resume_needs_only_the_folder(run_dir: Path) -> None:
    _train("--resume", "auto", "--output-dir", str(run_dir), "--max-steps", "1", "--print-freq", "3")
    first, resumed = _events(run_dir, "start")
    assert resumed["config"]["optim"] == first["config"]["optim"]  # arch, batch, lr, ... from the checkpoint
    assert resumed["config"]["data"]["synthetic"] and resumed["config"]["data"]["crop_size"] == 32
    assert resumed["config"]["run"]["print_freq"] == 3  # a flag a run may change is taken
    assert sorted(p.name for p in run_dir.glob("checkpoint-step*.pt"))[-1] == "checkpoint-step000000003.pt"


def test_a_flag_contradicting_the_checkpoint_is_refused(run_dir: Path) -> None:
    result = run_main(main, "--resume", "auto", "--output-dir", str(run_dir), "-a", "resnet34")
    assert_one_line_error(result, "--arch resnet34 contradicts", "checkpoint-step000000002.pt", "--arch resnet18")


def test_resume_auto_needs_the_runs_folder() -> None:
    assert_one_line_error(run_main(main, "--resume", "auto"), "--resume auto needs --output-dir")


@pytest.mark.slow
def test_evaluate_needs_only_the_checkpoint_and_pads_a_small_val_set(
    train_db: Path, val_db: Path, tmp_path: Path
) -> None:
    """A run at batch 48 (the val set is smaller), evaluated with nothing but the checkpoint and --val: no
    training lines, every val image counted once."""
    folder = tmp_path / "run"
    data = ["--loader", "torch", "--lmdb", "--train", str(train_db), "-j", "0", "-b", "48"]
    _train(
        *data, "-a", "resnet18", "--crop-size", "32", "--device", "cpu", "--max-steps", "1", "--output-dir", str(folder)
    )
    (checkpoint,) = folder.glob("checkpoint-step*.pt")
    result = _train("--evaluate", "--resume", str(checkpoint), "--val", str(val_db))
    assert "lr " not in result.stdout and "steps/epoch" not in result.stdout, result.stdout
    (val,) = _events(folder, "val")
    assert val["count"] == len(open_database(val_db)) < 48
    assert _events(folder, "start")[-1]["config"]["optim"]["arch"] == "resnet18"


# -- hints that name what the user runs -----------------------------------------------------------------


def test_trees_with_other_classes_get_a_hint_for_trees(tmp_path: Path) -> None:
    from PIL import Image

    for split, classes in (("train", "ab"), ("val", "a")):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.jpg")
    trees = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--loader", "torch"]
    result = run_main(main, *trees, *TINY, "--output-dir", str(tmp_path / "run"))
    assert_one_line_error(result, "class maps differ", "the same class folders")
    assert "--classes-from" not in result.stderr  # a converter flag, which refuses trees


@pytest.mark.parametrize(("argv0", "command"), [("lmdb-train", "lmdb-convert"), ("train.py", "python convert.py")])
def test_hints_name_the_converter_as_the_user_runs_it(
    monkeypatch: pytest.MonkeyPatch, argv0: str, command: str
) -> None:
    from lmdb_io.errors import convert_command

    monkeypatch.setattr("sys.argv", [f"/usr/bin/{argv0}"])
    assert convert_command() == command
