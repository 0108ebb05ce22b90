"""The machine a benchmark ran on (CPU, cores, memory, GPU and driver, versions) and its kind: the key of
its sections in bench/RESULTS.md (``cpu-2core``, ``gpu-nvidia-h100-80gb-hbm3``)."""

import importlib
import os
import platform
import re
import shutil
import subprocess
from typing import Any

import psutil

VERSIONS = {"torch": "torch", "torchvision": "torchvision", "DALI": "nvidia.dali", "py-lmdb": "lmdb"}
VERSIONS |= {"Pillow": "PIL", "lmdb_io": "lmdb_io", "pytest": "pytest"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def driver_version() -> str:
    try:
        cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out.splitlines()[0] if out else "unknown"


def describe(gpu: bool = True) -> dict[str, Any]:
    """Machine and versions; with ``gpu``, GPU 0 as torch sees it (none: no "gpu" key)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "shm_gib": round(shutil.disk_usage("/dev/shm").total / (1 << 30), 1) if os.path.isdir("/dev/shm") else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for name, module in VERSIONS.items():
        try:
            info[name] = importlib.import_module(module).__version__
        except Exception:  # absent or broken: not reported
            pass
    if "py-lmdb" in info:
        import lmdb

        info["liblmdb"] = ".".join(map(str, lmdb.version()))
    if gpu and "torch" in info:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / (1 << 30), 1))
            info.update(cuda=torch.version.cuda, driver=driver_version(), gpus=torch.cuda.device_count())
    return info


def kind(info: dict[str, Any]) -> str:
    if "gpu" in info:
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    return f"cpu-{info['cores_usable']}core"


def line(info: dict[str, Any]) -> str:
    gpu = ""
    if "gpu" in info:
        gpu = f"GPU {info['gpu']} ({info['gpu_memory_gib']} GiB, driver {info['driver']}, CUDA {info['cuda']}); "
    versions = ", ".join(f"{name} {info[name]}" for name in (*VERSIONS, "liblmdb") if name in info)
    return (
        f"Machine: {gpu}{info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['memory_gib']} GiB "
        f"RAM, /dev/shm {info['shm_gib']} GiB, Linux {info['kernel']}; Python {info['python']}, {versions}."
    )
