"""scripts/pick_wheels.py: which torch and DALI wheels `make setup` installs for a driver, OS and CPU."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pick_wheels.py"
_spec = importlib.util.spec_from_file_location("pick_wheels", SCRIPT)
assert _spec is not None and _spec.loader is not None
pick_wheels = importlib.util.module_from_spec(_spec)
sys.modules["pick_wheels"] = pick_wheels  # dataclasses look their module up by name
_spec.loader.exec_module(pick_wheels)
choose, driver_major, NoFit = pick_wheels.choose, pick_wheels.driver_major, pick_wheels.NoFit

LINUX = ("Linux", "x86_64")
PY311 = (3, 11)
DEFAULT_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
CU126 = ["torch==2.9.1", "torchvision==0.24.1", "--index-url", "https://download.pytorch.org/whl/cu126"]
CU118 = ["torch==2.7.1", "torchvision==0.22.1", "--index-url", "https://download.pytorch.org/whl/cu118"]


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("535.104.05", 535),
        ("580.65.06\n580.65.06\n", 580),  # one line per GPU
        ("  470.82.01 ", 470),
        ("", None),
        (None, None),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", None),
    ],
)
def test_driver_major(text: str | None, major: int | None) -> None:
    assert driver_major(text) == major


def test_no_gpu_default_torch_and_dali_cuda130() -> None:
    c = choose(None, *LINUX, PY311)
    assert c.torch_args == DEFAULT_TORCH
    assert c.dali_args == ["nvidia-dali-cuda130"]
    assert c.line.startswith("setup: no NVIDIA driver -> torch 2.14.1")
    assert "nvidia-dali-cuda130" in c.line and "\n" not in c.line


@pytest.mark.parametrize("driver", [580, 595])
def test_driver_580_up_cuda13(driver: int) -> None:
    c = choose(driver, *LINUX, PY311)
    assert (c.torch_args, c.dali_args) == (DEFAULT_TORCH, ["nvidia-dali-cuda130"])
    assert c.line.startswith(f"setup: NVIDIA driver {driver} -> torch 2.14.1")


@pytest.mark.parametrize("driver", [525, 535, 579])
def test_driver_525_579_torch_cu126_dali_cuda120(driver: int) -> None:
    c = choose(driver, *LINUX, PY311)
    assert (c.torch_args, c.dali_args) == (CU126, ["nvidia-dali-cuda120"])
    assert c.line == (
        f"setup: NVIDIA driver {driver} -> torch 2.9.1+cu126 (https://download.pytorch.org/whl/cu126), "
        "DALI nvidia-dali-cuda120"
    )


@pytest.mark.parametrize("driver", [450, 470, 524])
def test_driver_450_524_torch_cu118_dali_cuda110_pinned_on_pypi(driver: int) -> None:
    c = choose(driver, *LINUX, (3, 11))
    assert (c.torch_args, c.dali_args) == (CU118, ["nvidia-dali-cuda110==1.34.0"])
    assert "torch 2.7.1+cu118" in c.line


def test_driver_450_524_python_312_dali_from_nvidia_index() -> None:
    c = choose(470, *LINUX, (3, 12))
    assert c.torch_args == CU118
    assert c.dali_args == ["nvidia-dali-cuda110", "--extra-index-url", "https://pypi.nvidia.com"]
    assert "https://pypi.nvidia.com" in c.line


def test_driver_450_524_python_314_has_no_cu118_torch() -> None:
    with pytest.raises(NoFit, match=r"Python <= 3\.13.*driver >= 525"):
        choose(470, *LINUX, (3, 14))


@pytest.mark.parametrize("driver", [0, 418, 449])
def test_driver_below_450_refused_naming_the_driver_needed(driver: int) -> None:
    with pytest.raises(NoFit, match="driver >= 450") as info:
        choose(driver, *LINUX, PY311)
    assert "\n" not in str(info.value)


def test_old_driver_with_both_overrides_is_the_users_call() -> None:
    c = choose(418, *LINUX, PY311, torch_spec="torch==2.3.1+cu118", dali_pkg="none")
    assert (c.torch_args, c.dali_args) == (["torch==2.3.1+cu118"], [])


def test_python_below_310_refused() -> None:
    with pytest.raises(NoFit, match=r"Python >= 3\.10"):
        choose(None, *LINUX, (3, 9))


def test_torch_spec_overrides_any_driver() -> None:
    for driver in (None, 470, 535, 580):
        c = choose(driver, *LINUX, PY311, torch_spec="torch torchvision")
        assert c.torch_args == ["torch", "torchvision"]
        assert 'TORCH_SPEC="torch torchvision"' in c.line
    assert choose(535, *LINUX, PY311, torch_spec="torch").dali_args == ["nvidia-dali-cuda120"]


def test_torch_spec_keeps_index_arguments() -> None:
    spec = "torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128"
    assert choose(None, *LINUX, PY311, torch_spec=spec).torch_args == shlex.split(spec)


def test_dali_pkg_overrides_and_none() -> None:
    c = choose(None, *LINUX, PY311, dali_pkg="nvidia-dali-cuda120")
    assert (c.torch_args, c.dali_args) == (DEFAULT_TORCH, ["nvidia-dali-cuda120"])
    assert 'DALI_PKG="nvidia-dali-cuda120"' in c.line
    c = choose(580, *LINUX, PY311, dali_pkg="none")
    assert c.dali_args == [] and "no DALI (DALI_PKG=none)" in c.line


@pytest.mark.parametrize(
    ("system", "machine"), [("Darwin", "arm64"), ("Windows", "AMD64"), ("Linux", "ppc64le"), ("Linux", "armv7l")]
)
def test_no_dali_wheels_off_linux_x86_64_aarch64(system: str, machine: str) -> None:
    c = choose(None, system, machine, PY311)
    assert c.torch_args == DEFAULT_TORCH
    assert c.dali_args == []
    assert f"no DALI: its wheels exist for Linux x86_64/aarch64 only, this is {system} {machine}" in c.line


def test_linux_aarch64_gets_dali() -> None:
    assert choose(535, "Linux", "aarch64", PY311).dali_args == ["nvidia-dali-cuda120"]


def test_intel_mac_refused_unless_torch_spec() -> None:
    with pytest.raises(NoFit, match="x86_64"):
        choose(None, "Darwin", "x86_64", PY311)
    assert choose(None, "Darwin", "x86_64", PY311, torch_spec="torch==2.2.2").dali_args == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_cli_prints_bash_assignments_for_the_makefile() -> None:
    proc = _cli("--driver", "535.104.05", "--system", "Linux", "--machine", "x86_64", "--python", "3.11")
    assert proc.returncode == 0, proc.stderr
    script = (
        proc.stdout
        + '\nprintf "%s|" "${torch_args[@]}"; echo; printf "%s|" "${dali_args[@]}"; echo; echo "$setup_line"'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "|".join(CU126) + "|"
    assert out[1] == "nvidia-dali-cuda120|"
    assert out[2].startswith("setup: NVIDIA driver 535 -> torch 2.9.1+cu126")


def test_cli_old_driver_one_line_on_stderr_exit_2() -> None:
    proc = _cli("--driver", "440.100", "--system", "Linux", "--machine", "x86_64")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "driver >= 450" in proc.stderr
