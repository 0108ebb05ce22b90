#!/usr/bin/env python3
"""Pick the torch and DALI wheels that fit this machine: what `make setup` installs.

Standard library only: the system python3 runs it before the virtual environment exists.

Inputs: the NVIDIA driver version (``nvidia-smi --query-gpu=driver_version --format=csv,noheader``; empty
when there is no GPU), ``platform.system()``, ``platform.machine()``, the Python version, and the user's
overrides ``TORCH_SPEC`` / ``DALI_PKG`` (``auto`` picks). Output, for the Makefile to ``eval``: two bash
arrays of pip arguments, ``torch_args`` and ``dali_args`` (empty: install no DALI), and ``setup_line``,
one human line saying what was chosen and why. A driver (or Python) that no build fits: one line on stderr,
exit status 2.

Mapping (driver major -> torch, DALI):

- no driver, or >= 580: ``torch==2.14.1 torchvision==0.29.1`` from the default index (PyPI: a CUDA 13
  build that also runs on the CPU) and ``nvidia-dali-cuda130`` (its CPU operators need no GPU);
- 525-579: torch's CUDA 12.6 build from https://download.pytorch.org/whl/cu126 (``torch==2.9.1
  torchvision==0.24.1``; CUDA 12.x runs on drivers >= 525 by minor-version compatibility) and
  ``nvidia-dali-cuda120``;
- 450-524: the newest pair with a CUDA 11.8 build, ``torch==2.7.1 torchvision==0.22.1`` from
  https://download.pytorch.org/whl/cu118, and ``nvidia-dali-cuda110`` (PyPI up to 1.34.0 for
  Python <= 3.11; later releases only from https://pypi.nvidia.com);
- older: refused.

DALI wheels exist for Linux x86_64 and aarch64 only; elsewhere no DALI is installed (the torch loader
runs). ``DALI_PKG=none`` skips DALI anywhere.
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import sys
from dataclasses import dataclass

DEFAULT_TORCH = ("2.14.1", "0.29.1")  # PyPI's wheels: CUDA 13 builds, driver >= 580 (or no GPU)
TORCH_INDEX = "https://download.pytorch.org/whl"
CU126_TORCH = ("2.9.1", "0.24.1")  # pytorch.org/get-started/previous-versions, v2.9.1, CUDA 12.6
CU118_TORCH = ("2.7.1", "0.22.1")  # the newest release with a CUDA 11.8 build
NVIDIA_INDEX = "https://pypi.nvidia.com"
DALI_CUDA110_PYPI = "1.34.0"  # the last nvidia-dali-cuda110 on PyPI (Python <= 3.11)
DALI_PLATFORMS = {("Linux", "x86_64"), ("Linux", "aarch64")}


class NoFit(Exception):
    """No torch/DALI build this project installs fits this driver or Python; the message says what would."""


@dataclass(frozen=True)
class Choice:
    torch_args: list[str]  # pip arguments for torch and torchvision
    dali_args: list[str]  # pip arguments for DALI; empty: no DALI
    line: str  # one human line: what was chosen and why


def driver_major(text: str | None) -> int | None:
    """The major version from nvidia-smi's first line ("535.104.05" -> 535); None if there is none.

    nvidia-smi prints its failures ("NVIDIA-SMI has failed ...") on stdout: anything that is not a
    version counts as no driver.
    """
    first = (text or "").strip().splitlines()[:1]
    match = re.fullmatch(r"(\d+)(\.\d+)*", first[0].strip()) if first else None
    return int(match.group(1)) if match else None


def _pair(versions: tuple[str, str]) -> list[str]:
    return [f"torch=={versions[0]}", f"torchvision=={versions[1]}"]


def choose(
    driver: int | None,
    system: str,
    machine: str,
    python: tuple[int, int],
    torch_spec: str = "auto",
    dali_pkg: str = "auto",
) -> Choice:
    """The torch and DALI pip arguments for this machine; raises NoFit."""
    if python < (3, 10):
        raise NoFit(
            f"setup: Python {python[0]}.{python[1]}: this project needs Python >= 3.10 (so do torch "
            f"{DEFAULT_TORCH[0]} and DALI 2.x); e.g. make setup PYTHON=python3.11"
        )
    who = "no NVIDIA driver" if driver is None else f"NVIDIA driver {driver}"
    auto_torch, auto_dali = torch_spec.strip() == "auto", dali_pkg.strip() == "auto"
    if driver is not None and driver < 450 and (auto_torch or auto_dali):
        raise NoFit(
            f"setup: {who} is too old: the oldest builds this project installs (torch {CU118_TORCH[0]}+cu118, "
            "nvidia-dali-cuda110) need NVIDIA driver >= 450; update the driver (>= 525 for CUDA 12, >= 580 "
            "for CUDA 13), or set both TORCH_SPEC and DALI_PKG"
        )

    if auto_torch and (system, machine) == ("Darwin", "x86_64"):
        raise NoFit(
            "setup: macOS on Intel: torch has published no macOS x86_64 wheels since 2.2, and this project "
            "needs torch >= 2.3; use an Apple-silicon Mac or Linux, or set TORCH_SPEC to a torch you built"
        )

    # torch
    if not auto_torch:
        torch_args = shlex.split(torch_spec)
        torch_said = f'torch from TORCH_SPEC="{torch_spec.strip()}"'
    elif driver is None or driver >= 580:
        torch_args = _pair(DEFAULT_TORCH)
        build = "no GPU: runs on the CPU" if driver is None else "CUDA 13 build"
        torch_said = f"torch {DEFAULT_TORCH[0]} (default index; {build})"
    elif driver >= 525:
        torch_args = [*_pair(CU126_TORCH), "--index-url", f"{TORCH_INDEX}/cu126"]
        torch_said = f"torch {CU126_TORCH[0]}+cu126 ({TORCH_INDEX}/cu126)"
    else:
        if python >= (3, 14):
            raise NoFit(
                f"setup: {who} needs torch's CUDA 11.8 build, whose newest release (torch {CU118_TORCH[0]}) "
                f"has no wheels for Python {python[0]}.{python[1]}; use Python <= 3.13 (make setup "
                "PYTHON=python3.13), or NVIDIA driver >= 525"
            )
        torch_args = [*_pair(CU118_TORCH), "--index-url", f"{TORCH_INDEX}/cu118"]
        torch_said = f"torch {CU118_TORCH[0]}+cu118 ({TORCH_INDEX}/cu118)"

    # DALI
    where = f"{system} {machine}"
    if not auto_dali:
        dali_args = [] if dali_pkg.strip() in ("", "none") else shlex.split(dali_pkg)
        dali_said = f'DALI from DALI_PKG="{dali_pkg.strip()}"' if dali_args else "no DALI (DALI_PKG=none)"
    elif (system, machine) not in DALI_PLATFORMS:
        dali_args = []
        dali_said = f"no DALI: its wheels exist for Linux x86_64/aarch64 only, this is {where} (torch loader only)"
    elif driver is None:
        dali_args = ["nvidia-dali-cuda130"]
        dali_said = "DALI nvidia-dali-cuda130 (its CPU operators run without a GPU)"
    elif driver >= 580:
        dali_args = ["nvidia-dali-cuda130"]
        dali_said = "DALI nvidia-dali-cuda130"
    elif driver >= 525:
        dali_args = ["nvidia-dali-cuda120"]
        dali_said = "DALI nvidia-dali-cuda120"
    elif python <= (3, 11):
        dali_args = [f"nvidia-dali-cuda110=={DALI_CUDA110_PYPI}"]
        dali_said = f"DALI nvidia-dali-cuda110 {DALI_CUDA110_PYPI} (the last on PyPI)"
    else:
        dali_args = ["nvidia-dali-cuda110", "--extra-index-url", NVIDIA_INDEX]
        dali_said = f"DALI nvidia-dali-cuda110 ({NVIDIA_INDEX}: PyPI has none for Python {python[0]}.{python[1]})"

    return Choice(torch_args, dali_args, f"setup: {who} -> {torch_said}, {dali_said}")


def shell(choice: Choice) -> str:
    """Bash assignments for the Makefile's eval: two arrays and one string."""
    torch_args = " ".join(shlex.quote(a) for a in choice.torch_args)
    dali_args = " ".join(shlex.quote(a) for a in choice.dali_args)
    return f"torch_args=({torch_args})\ndali_args=({dali_args})\nsetup_line={shlex.quote(choice.line)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--driver", default="", help="nvidia-smi's driver_version output (empty: no GPU)")
    p.add_argument("--torch-spec", default="auto", help="TORCH_SPEC: pip arguments for torch, or auto")
    p.add_argument("--dali-pkg", default="auto", help="DALI_PKG: pip arguments for DALI, none, or auto")
    p.add_argument("--system", default=platform.system())
    p.add_argument("--machine", default=platform.machine())
    p.add_argument("--python", default="{}.{}".format(*sys.version_info[:2]), help="MAJOR.MINOR of the venv")
    args = p.parse_args(argv)
    major, minor = (int(x) for x in args.python.split(".")[:2])
    try:
        choice = choose(
            driver_major(args.driver), args.system, args.machine, (major, minor), args.torch_spec, args.dali_pkg
        )
    except NoFit as exc:
        print(exc, file=sys.stderr)
        return 2
    print(shell(choice))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
