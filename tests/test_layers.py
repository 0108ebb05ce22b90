"""The package layering and the command-line names: storage (lmdb_io) knows no loader, DALI's source
workers import neither torch nor PIL, every command answers --version under the name it was started by,
and a loader that yields another count than it announced stops the run."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, repo_pythonpath, run_cli, run_main

from lmdb_io import __version__
from loaders.batch import Batch, LoaderLengthError, counted

# package -> the first-party packages it may import (the layers, bottom up)
ALLOWED = {
    "lmdb_io": {"lmdb_io"},
    "loaders": {"loaders", "lmdb_io", "dali_pipeline"},
    "dali_pipeline": {"dali_pipeline", "lmdb_io", "loaders"},
    "lmdb_dali_train": {"lmdb_dali_train", "lmdb_io", "loaders", "dali_pipeline"},
}


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_their_layers(package: str) -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in ALLOWED and name.split(".")[0] not in ALLOWED[package]
    ]
    assert not wrong


def test_dali_pipeline_uses_only_the_loader_contract() -> None:
    """The DALI graphs and sources use the plan, the presets, the resolution schedule and the workers'
    signal policy (standard library only), never a loader built on them."""
    used = {name for path in (REPO / "dali_pipeline").rglob("*.py") for name in _imports(path)}
    contract = {"loaders.plan", "loaders.presets", "loaders.resolution", "loaders.workers"}
    assert {n for n in used if n.startswith("loaders")} <= contract


def test_source_workers_import_no_torch_and_no_pil() -> None:
    """DALI spawns Python workers that unpickle the source: they must start without torch or PIL."""
    code = (
        "import sys, dali_pipeline.source, dali_pipeline.workers, loaders.plan, loaders.resolution, lmdb_io.database; "
        "print(sorted(m for m in ('torch', 'PIL', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": repo_pythonpath()}, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize(
    "args, name",
    [
        (["convert.py"], "convert.py"),
        (["train.py"], "train.py"),
        (["-m", "lmdb_dali_train"], "python -m lmdb_dali_train"),
    ],
)
def test_version_and_help_name_the_command(args: list[str], name: str) -> None:
    version = run_cli(*args, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"{name} {__version__}"
    assert run_cli(*args, "--help").stdout.startswith(f"usage: {name} ")


@pytest.mark.parametrize("main_name", ["convert_main", "lmdb_io_main"])
def test_in_process_commands_answer_version(main_name: str) -> None:
    from lmdb_dali_train import cli

    result = run_main(getattr(cli, main_name), "--version")
    assert result.returncode == 0 and result.stdout.strip().endswith(__version__)


class _Announcing:
    def __init__(self, announced: int, yielded: int) -> None:
        self.announced, self.yielded = announced, yielded

    def __len__(self) -> int:
        return self.announced

    def __iter__(self) -> Iterator[Batch]:
        one = torch.zeros(1)
        for _ in range(self.yielded):
            yield Batch(one, one, one, one.bool())


@pytest.mark.parametrize("announced, yielded", [(3, 2), (2, 3), (0, 1)])
def test_a_loader_must_yield_what_it_announced(announced: int, yielded: int) -> None:
    with pytest.raises(LoaderLengthError, match=f"announced {announced} batches"):
        list(counted(_Announcing(announced, yielded)))
    assert len(list(counted(_Announcing(yielded, yielded)))) == yielded


def _layout_rows() -> list[tuple[str, str]]:
    """(path cell, what cell) of the README's first Layout table."""
    text = (REPO / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n\n")[1]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    return [(path.strip(), what.strip()) for path, what in rows]


def test_readme_layout_matches_the_tree() -> None:
    """Every path the Layout table names exists, every module it names exists in its package, and every
    top-level package or script of the checkout has a row."""
    rows = _layout_rows()
    named = {p.strip("`/ ") for path, _ in rows for p in path.split(",")}
    assert all((REPO / p).exists() for p in named), sorted(p for p in named if not (REPO / p).exists())
    for path, what in rows:
        folder = REPO / path.strip("`/ ").split(",")[0]
        if folder.is_dir():
            modules = {m for m in what.replace("(", " ").replace(",", " ").split() if m.strip("`").endswith(".py")}
            missing = [m for m in modules if not (folder / m.strip("`")).exists()]
            assert not missing, (path, missing)
    top = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    packages = {n for n in top if (REPO / n / "__init__.py").exists()} | {n for n in top if n.endswith(".py")}
    assert packages <= named, packages - named
