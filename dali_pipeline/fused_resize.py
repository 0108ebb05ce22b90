"""The fused CPU resize + flip + normalize operator (``fused_resize.cc``): build it, cache it, load it.

Why: DALI's CPU ``fn.resize`` with antialiasing plus ``fn.crop_mirror_normalize`` cost about as much as
decoding, and that is where FFCV's CPU lead came from (``python -m bench.stages``). The fused operator does
the same work in one pass, with torchvision's own antialiased bilinear weights. DALI ships no such
operator, so it is compiled once per DALI version against the installed DALI's headers, on first use (a few
seconds) or by ``make setup``, and cached under ``$LMDB_DALI_TRAIN_CACHE`` (default
``~/.cache/lmdb-dali-train``). Compiling needs a C++ compiler (``$CXX``, else ``c++``) and the CUDA
headers DALI's headers include (a CUDA toolkit, or the pip packages ``--header-packages`` names); with
either missing, or with ``LMDB_DALI_FUSED_RESIZE=0``, the CPU graph keeps DALI's own operators, with one
warning saying why. GPU pipelines always use DALI's GPU operators.

``python -m dali_pipeline.fused_resize`` builds it and says where it is or why not.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("fused_resize.cc")
OP = "lmdb_dali_train__ResizeFlipNormalize"  # fn.lmdb_dali_train.resize_flip_normalize
SWITCH = "LMDB_DALI_FUSED_RESIZE"  # "0": DALI's own CPU operators
CACHE = "LMDB_DALI_TRAIN_CACHE"
# the CUDA headers DALI's headers pull in (cuda_fp16.h includes nv/target from CUDA 11.7 on), and the pip
# packages that carry them for each DALI CUDA flavour (nvidia-dali-cudaXX0)
HEADERS = ("cuda_runtime_api.h", "crt/host_config.h", "nv/target")
HEADER_PACKAGES = {
    130: ("nvidia-cuda-runtime", "nvidia-cuda-crt", "nvidia-cuda-cccl"),
    120: ("nvidia-cuda-runtime-cu12", "nvidia-cuda-nvcc-cu12", "nvidia-cuda-cccl-cu12"),
    110: ("nvidia-cuda-runtime-cu11", "nvidia-cuda-nvcc-cu11", "nvidia-cuda-cccl-cu11"),
}


class Unavailable(RuntimeError):
    """The operator cannot be built or loaded here; the message says why in one line."""


def cache_dir() -> Path:
    root = os.environ.get(CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "lmdb-dali-train"
    )
    return Path(root) / "fused_resize"


def _include_candidates() -> list[Path]:
    """Where CUDA headers may be, most specific first: $CUDA_HOME, the pip packages beside this Python's
    DALI, then the system toolkit."""
    found: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append(Path(os.environ[var]) / "include")
    nvidia = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    for inc in sorted(nvidia.glob("*/include")):
        found += [inc, inc / "cccl"]
    found.append(Path("/usr/local/cuda/include"))
    found += sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)
    return [p for p in dict.fromkeys(found) if p.is_dir()]


def header_dirs() -> list[Path]:
    """One include directory per needed CUDA header (``HEADERS``), in search order; raises ``Unavailable``
    naming the first header found nowhere."""
    candidates, dirs = _include_candidates(), []
    for header in HEADERS:
        where = next((d for d in candidates if (d / header).exists()), None)
        if where is None:
            raise Unavailable(
                f"no CUDA header {header} (set CUDA_HOME to a CUDA toolkit, or pip install "
                f"{' '.join(header_packages()) or 'the CUDA headers'})"
            )
        dirs.append(where)
    return list(dict.fromkeys(dirs))


def _dali_cuda() -> int | None:
    from importlib import metadata

    for flavour in HEADER_PACKAGES:
        try:
            metadata.version(f"nvidia-dali-cuda{flavour}")
        except metadata.PackageNotFoundError:
            continue
        return flavour
    return None


def header_packages() -> list[str]:
    """pip packages that would supply the CUDA headers missing here, for the installed DALI's CUDA."""
    flavour = _dali_cuda()
    if flavour is None:
        return []
    candidates = _include_candidates()
    missing = [h for h in HEADERS if not any((d / h).exists() for d in candidates)]
    return list(HEADER_PACKAGES[flavour]) if missing else []


def _compile_command(output: Path) -> list[str]:
    import nvidia.dali.sysconfig as dali_sysconfig

    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx) is None:
        raise Unavailable(f"no C++ compiler {cxx!r} on PATH (install g++ or set CXX)")
    includes = [f"-I{d}" for d in header_dirs()]
    return [
        cxx, "-std=c++17", "-O3", "-fPIC", "-shared", "-w", str(SOURCE), "-o", str(output),
        *dali_sysconfig.get_compile_flags(), *includes, *dali_sysconfig.get_link_flags(),
    ]  # fmt: skip


def library_path() -> Path:
    """Where the build for this DALI, this source and this compiler command lives."""
    import nvidia.dali as dali

    command = _compile_command(Path("OUT"))
    key = hashlib.sha256(SOURCE.read_bytes() + dali.__version__.encode() + "\0".join(command).encode())
    return cache_dir() / f"dali-{dali.__version__}-{key.hexdigest()[:16]}" / "libfused_resize.so"


def build(verbose: bool = False) -> Path:
    """The operator's library, compiled if this cache lacks it. A lock file makes concurrent ranks compile
    once; the library appears by an atomic rename, so no process loads a half-written file."""
    target = library_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            command = _compile_command(partial)
            if verbose:
                print(" ".join(command), file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines()
                raise Unavailable(f"compiling {SOURCE.name} failed: {(errors or ['no output'])[0].strip()}")
            os.replace(partial, target)
    return target


@functools.cache
def _load() -> str | None:
    """Load the operator into DALI once per process; None when loaded, else why not."""
    if os.environ.get(SWITCH, "1").strip() in ("0", "off", "no", "false"):
        return f"{SWITCH}={os.environ[SWITCH]}"
    try:
        from nvidia.dali import plugin_manager

        plugin_manager.load_library(str(build()))
    except Unavailable as e:
        return str(e)
    except (OSError, RuntimeError) as e:
        return f"loading {OP} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


def available() -> bool:
    """Whether ``fn.lmdb_dali_train.resize_flip_normalize`` can be used here; the first failure warns once,
    naming why, and the CPU graph falls back to DALI's own resize and normalize."""
    reason = _load()
    if reason is not None and not reason.startswith(SWITCH):
        _warn_once(reason)
    return reason is None


def unavailable_reason() -> str | None:
    return _load()


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"fused CPU resize not used ({reason}); DALI's own CPU resize and normalize run instead (slower)",
        RuntimeWarning,
        stacklevel=3,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_pipeline.fused_resize", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--header-packages",
        action="store_true",
        help="print the pip packages that would supply missing CUDA headers (nothing if none are missing) and exit",
    )
    p.add_argument("--verbose", action="store_true", help="print the compiler command")
    args = p.parse_args(argv)
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        print("fused resize: no DALI installed, nothing to build")
        return 0
    if args.header_packages:
        print(" ".join(header_packages()))
        return 0
    started = time.monotonic()
    try:
        path = build(verbose=args.verbose)
    except Unavailable as e:
        print(f"fused resize: not built: {e}; the CPU graph uses DALI's own resize and normalize")
        return 1
    print(f"fused resize: {path} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
