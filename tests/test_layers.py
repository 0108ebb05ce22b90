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

from lmdb_dali_train.loaders.batch import Batch, LoaderLengthError, counted
from lmdb_io import __version__

# The layers, bottom up: each may import only itself and the layers listed before it. A module belongs to
# the longest prefix that names it (lmdb_io.reading is not storage).
LAYERS = [
    "lmdb_io",  # storage: the record format, the database, the converter
    "lmdb_io.reading",  # what both loaders follow: rank plan, presets, resolution, bad records
    "dali_pipeline",  # DALI graphs and sources
    "lmdb_dali_train.loaders",  # the loaders the trainer iterates
    "lmdb_dali_train",  # the trainer and the command lines
]
TOP_LEVEL = {"lmdb_io", "dali_pipeline", "lmdb_dali_train"}


def _layer(module: str) -> int | None:
    """The index in LAYERS of the layer holding ``module`` (None: not a first-party module)."""
    owners = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return max(owners, key=lambda i: len(LAYERS[i])) if owners else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, relative imports resolved to absolute names."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # "from . import x" imports the submodule x
            yield from ([f"{module}.{a.name}" for a in node.names] if not node.module else [module])


def _product_modules() -> list[Path]:
    return sorted(p for top in TOP_LEVEL for p in (REPO / top).rglob("*.py"))


def test_layers_import_only_themselves_and_the_layers_below() -> None:
    wrong = []
    for path in _product_modules():
        own = _layer(_module_name(path))
        assert own is not None, path
        for name in _imports(path):
            layer = _layer(name)
            if layer is not None and layer > own:
                wrong.append(f"{path.relative_to(REPO)} ({LAYERS[own]}) imports {name} ({LAYERS[layer]})")
    assert not wrong


def test_no_two_packages_import_each_other() -> None:
    """Among the packages (every folder with an __init__.py), imports form no cycle of two."""
    edges = {
        (_module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path), name)
        for path in _product_modules()
        for name in _imports(path)
    }
    packages = {_module_name(p) for p in _product_modules() if p.name == "__init__.py"}

    def package_of(module: str) -> str | None:
        owners = [p for p in packages if module == p or module.startswith(p + ".")]
        return max(owners, key=len) if owners else None

    pairs = {(package_of(a), package_of(b)) for a, b in edges}
    pairs = {(a, b) for a, b in pairs if a and b and a != b}
    assert not {(a, b) for a, b in pairs if (b, a) in pairs}


def test_the_wheel_installs_exactly_the_project_packages() -> None:
    """Only the card's packages and the project-named one sit at the top: a user's own ``loaders.py`` or
    ``config.py`` never shadows ours."""
    import tomllib
    from setuptools import find_packages

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(REPO), include=find["include"], exclude=find.get("exclude", ()))
    assert {name.split(".")[0] for name in packages} == TOP_LEVEL
    folders = {p.parent for p in _product_modules() if p.name == "__init__.py"}
    assert {_module_name(f / "__init__.py") for f in folders} <= set(packages)


def test_source_workers_import_no_torch_and_no_pil() -> None:
    """DALI spawns Python workers that unpickle the source: they must start without torch or PIL."""
    code = (
        "import sys, dali_pipeline.source, dali_pipeline.workers, lmdb_io.reading.plan, lmdb_io.reading.resolution, "
        "lmdb_io.database; "
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
    """Both answer before torch is imported (``-X importtime`` lists every module a process imports)."""
    version = run_cli("-X", "importtime", *args, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"{name} {__version__}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in version.stderr.splitlines()}
    assert "argparse" in imported  # the list is read
    assert "torch" not in imported
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


def _code_lines(path: Path) -> int:
    """Non-blank lines that are not comments (docstrings count)."""
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def test_no_module_over_400_lines() -> None:
    """Small modules with one job: none of the product's or the benchmarks' over 400 lines of code."""
    modules = [*_product_modules(), *sorted((REPO / "bench").rglob("*.py"))]
    long = {str(p.relative_to(REPO)): n for p in modules if (n := _code_lines(p)) > 400}
    assert not long


def test_the_benchmarks_stay_under_two_fifths_of_the_product() -> None:
    """bench/ measures the product; at most 40% as many lines of code as the product itself."""
    product = sum(_code_lines(p) for p in _product_modules())
    bench = sum(_code_lines(p) for p in (REPO / "bench").rglob("*.py"))
    assert bench <= 0.4 * product, f"bench/ {bench} lines, the product {product}: {bench / product:.0%}"
