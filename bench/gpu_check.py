#!/usr/bin/env python3
"""One command for a GPU machine: the gpu test tier, the DALI pipeline, the torchvision loader and train.py, in
one table.

First runs the gpu test tier, ``python -m pytest -m gpu tests/test_gpu.py`` (DALI loader on GPU 0, a
training step per loader and AMP mode, checkpoints and resume, GPU decoder parity), as a subprocess with
this interpreter and PYTHONPATH (the repo put first) within ``--tests-budget`` seconds: its row gives the
passed / failed / xfailed / skipped counts and the seconds; pytest not installed, a failing test or a
timeout is a row too (per-test outcomes in the JSON, pytest's output in ``OUT/gpu_tests.txt``). Then
converts ``--images`` JPEGs into an LMDB (from ``--data DIR``, a JPEG folder in ImageFolder layout or
flat; without it ImageNet-sized JPEGs generated with ``lmdb_io.synthetic``; hard links cycle through
the files when there are fewer), then measures on GPU 0:

1. the DALI train pipeline alone (``make_dali_loader``, mixed decode) at each ``--hw-loads`` value,
   and the torchvision DataLoader alone (``make_torch_loader``, a worker per core): one epoch per run,
   the first ``--warmup-batches`` batches untimed, ``torch.cuda.synchronize()`` before each clock read;
2. training images/s and data-wait of each ``--archs`` model through ``train.py`` itself (a
   subprocess, same model flags ``-b --amp bf16 --channels-last`` for all) with ``--synthetic``,
   ``--loader dali --lmdb`` and ``--loader torch --lmdb``, read from its ``log.jsonl`` with the first
   print window (warm-up) left out.

Prints one Markdown table and writes it with every number to ``OUT/gpu_check.json`` (rewritten after
each row). A missing GPU, DALI, lmdb or torchvision model turns the rows that need it into "not run:
<reason>"; the rest are still measured and the exit status is 0. ``--budget`` seconds bound the whole
run, the test tier included: rows that would not fit are not run. ``--cpu`` is a dry run of the same code
on the CPU with tiny sizes (the test tier with CUDA hidden: its row shows the tier skipped, and why).
Examples::

    PYTHONPATH=/tmp/site python bench/gpu_check.py               # about 5 minutes on one H100/H200
    python bench/gpu_check.py --quick --data /data/imagenet/train --out /tmp/res
    python bench/gpu_check.py --cpu --out /tmp/dry
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `lmdb_io` and `dali_pipeline` importable
    sys.path.insert(0, str(REPO))

# Only the standard library at the top: DALI's parallel source and the JPEG generator start spawned
# processes, which re-import this file.

PROG = "gpu_check"
TRAIN_PY = REPO / "train.py"
MB = 1e6
GENERATED = {"gpu": (10, 100), "cpu": (4, 8)}  # (classes, images per class) of generated JPEGs
VARIANTS = ("synthetic", "dali", "torch")
MIN_SECONDS = {"tests": 30.0, "loader": 15.0, "train": 25.0}  # budget a row needs on a GPU to be started
GPU_TESTS = "tests/test_gpu.py"  # the gpu test tier, relative to REPO


class RowFailure(Exception):
    """A measurement that ran and failed: its message is the row's one-line reason, ``detail`` goes to
    the row's JSON."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


@dataclass
class Data:
    """The LMDB every loader row reads (``db`` None until built, or when it could not be)."""

    work: Path
    db: Path | None = None
    length: int = 0
    description: str = "none"


def one_line(text: str, limit: int = 240) -> str:
    """The last non-empty line of ``text``, shortened, with table pipes escaped."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return (line if len(line) <= limit else line[: limit - 3] + "...").replace("|", "\\|")


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception; a SystemExit (how the bench/ helpers fail,
    with a command's stderr last) gives its last line."""
    if isinstance(exc, SystemExit):
        return one_line(str(exc)) or f"SystemExit {exc.code}"
    lines = str(exc).strip().splitlines()
    return one_line(f"{type(exc).__name__}: {lines[0] if lines else ''}")


# -- environment ------------------------------------------------------------------------------------


@dataclass
class Environment:
    """What the header reports, and for each unmet requirement the one-line reason."""

    info: dict[str, Any]
    missing: dict[str, str] = field(default_factory=dict)

    def why_not(self, needs: Sequence[str]) -> str | None:
        return next((self.missing[n] for n in needs if n in self.missing), None)


def _machine() -> dict[str, Any]:
    try:
        from bench.gpu_pipeline import machine

        return machine()
    except Exception:  # bench/ needs numpy and lmdb to import
        return {
            "cpu": platform.processor() or "unknown",
            "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)),
            "memory_gib": "?",
            "python": platform.python_version(),
        }


def _probe_gpu(env: Environment) -> None:
    import torch

    if not torch.cuda.is_available():
        env.missing["gpu"] = "no CUDA GPU visible to torch (torch.cuda.is_available() is False); --cpu runs the dry run"
        return
    try:
        from bench.gpu_pipeline import _driver_version

        driver = _driver_version()
    except Exception:  # bench/ needs numpy and lmdb to import
        driver = "unknown"
    torch.cuda.set_device(0)
    props = torch.cuda.get_device_properties(0)
    env.info.update(
        gpu=props.name,
        gpu_memory_gib=round(props.total_memory / (1 << 30), 1),
        cuda=torch.version.cuda,
        driver=driver,
        gpus=torch.cuda.device_count(),
    )


def _probe_dali(env: Environment, cpu: bool) -> None:
    try:
        import nvidia.dali as dali
        from nvidia.dali import backend
    except Exception as e:  # ImportError, or a broken install raising something else
        env.missing["dali"] = f"DALI not importable ({describe(e)})"
        return
    env.info["dali"] = dali.__version__
    try:
        import dali_pipeline.loader  # noqa: F401  (DALI, and lmdb_io.torch_loader: lmdb, torch, torchvision)
    except Exception as e:
        env.missing["dali"] = f"dali_pipeline does not import ({describe(e)})"
        return
    if not cpu and "gpu" not in env.missing:
        try:
            count = backend.GetCUDADeviceCount()
        except Exception as e:
            count, env.missing["dali"] = 0, f"DALI cannot query CUDA devices ({describe(e)})"
        if count == 0 and "dali" not in env.missing:
            env.missing["dali"] = "DALI sees no CUDA device (driver too old for this DALI wheel?)"


def _probe_lmdb(env: Environment) -> None:
    try:
        import lmdb
        import xxhash  # noqa: F401  (lmdb_io's record checksums)
    except Exception as e:
        env.missing["lmdb"] = f"lmdb_io's dependencies not importable ({describe(e)})"
        return
    env.info["py_lmdb"] = lmdb.__version__


def _probe_models(env: Environment, archs: Sequence[str]) -> None:
    try:
        import torchvision
    except Exception as e:
        env.missing["torchvision"] = f"torchvision not importable ({describe(e)})"
        return
    env.info["torchvision"] = torchvision.__version__
    names = set(torchvision.models.list_models(module=torchvision.models))
    for arch in archs:
        if arch not in names:
            env.missing[arch] = f"torchvision {torchvision.__version__} has no model {arch}"


def tests_env(cpu: bool) -> dict[str, str]:
    """The environment of the test tier's subprocess: this one's, the repo first on PYTHONPATH (kept: a GPU
    machine may have DALI, lmdb and xxhash there); ``--cpu`` hides every GPU, as the dry run promises."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}


def _probe_pytest(env: Environment, cpu: bool) -> None:
    """Whether the test tier's subprocess (same interpreter and PYTHONPATH) can import pytest."""
    proc = subprocess.run(
        [sys.executable, "-c", "import pytest; print(pytest.__version__)"],
        cwd=REPO,
        env=tests_env(cpu),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        env.missing["pytest"] = f"pytest not installed ({one_line(proc.stderr) or f'exit {proc.returncode}'})"
        return
    env.info["pytest"] = proc.stdout.strip()


def _shm_gib() -> float | None:
    """Size of /dev/shm, where DataLoader workers and DALI's parallel source pass batches (a container's
    64 MB default is too small for either)."""
    try:
        return round(shutil.disk_usage("/dev/shm").total / (1 << 30), 1)
    except OSError:
        return None


def probe(cpu: bool, archs: Sequence[str]) -> Environment:
    """Machine, versions and GPU; every missing piece is recorded with its reason, never raised."""
    env = Environment({**_machine(), "shm_gib": _shm_gib()})
    try:
        import torch
    except Exception as e:
        reason = f"torch not importable ({describe(e)})"
        env.missing.update({k: reason for k in ("torch", "gpu", "dali", "torchvision", "lmdb")})
        return env
    env.info["torch"] = torch.__version__
    steps: list[tuple[str, Callable[[Environment], None]]] = [
        ("gpu", _probe_gpu),
        ("lmdb", _probe_lmdb),
        ("torchvision", lambda e: _probe_models(e, archs)),
        ("dali", lambda e: _probe_dali(e, cpu)),
        ("pytest", lambda e: _probe_pytest(e, cpu)),
    ]
    if cpu:
        env.info["gpu"], steps = "none (--cpu dry run)", steps[1:]
    for key, step in steps:
        try:
            step(env)
        except Exception as e:  # a broken driver or install: the rows that need it are not run
            env.missing.setdefault(key, f"{key} check failed ({describe(e)})")
    return env


def machine_line(info: dict[str, Any], cpu: bool) -> str:
    """One line naming the GPU, driver, CPU cores and versions."""
    gpu = (
        "NO GPU: --cpu dry run"
        if cpu
        else f"GPU {info['gpu']} ({info['gpu_memory_gib']} GiB, driver {info['driver']}, CUDA {info['cuda']})"
        if "gpu_memory_gib" in info
        else "NO GPU visible"
    )
    versions = ", ".join(
        f"{name} {info[key]}"
        for name, key in (
            ("torch", "torch"),
            ("torchvision", "torchvision"),
            ("DALI", "dali"),
            ("lmdb", "py_lmdb"),
            ("pytest", "pytest"),
        )
        if key in info
    )
    return (
        f"Machine: {gpu}; {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
        f"{info['memory_gib']} GiB RAM, /dev/shm {info['shm_gib']} GiB; Python {info['python']}, "
        f"{versions or 'no torch'}."
    )


# -- data -------------------------------------------------------------------------------------------


def generate_jpegs(root: Path, classes: int, per_class: int, procs: int) -> int:
    """``classes`` x about ``per_class`` ImageNet-sized JPEGs under ``root/part*/class_*``, written by
    ``procs`` spawned processes with distinct seeds; returns the count."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from lmdb_io.synthetic import make_image_folder

    parts = max(1, min(procs, per_class))
    each = math.ceil(per_class / parts)
    with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(make_image_folder, str(root / f"part{k:02d}"), classes, each, k) for k in range(parts)]
        for job in jobs:
            job.result()
    return classes * each * parts


def prepare_database(args: argparse.Namespace, work: Path, cores: int) -> tuple[Path, int, str]:
    """The LMDB to read, its image count, and where its images came from."""
    from bench.bench_lmdb import build_tree, convert_cmd, find_jpegs, remove, run_checked
    from bench.bench_loaders import warm_page_cache

    if args.data is not None:
        source, origin = args.data, f"JPEGs of {args.data}"
    else:
        classes, per_class = GENERATED["cpu" if args.cpu else "gpu"]
        source = work / "generated"
        generate_jpegs(source, classes, per_class, min(cores, 10))
        origin = f"JPEGs generated by lmdb_io.synthetic ({classes} classes, 300-500 x 240-400 px)"
    jpegs = find_jpegs(source)
    tree = build_tree(jpegs, work / "tree", args.images)
    db = work / "train.lmdb"
    remove(db)
    run_checked(convert_cmd(tree, db, "--workers", str(cores)))
    remove(tree.root)
    warm_page_cache(db)
    how = "hard links" if tree.linked else "copies"
    data = (
        f"{args.images:,} JPEGs ({tree.nbytes / MB:,.0f} MB, {how} to {len(jpegs):,} {origin}) "
        f"in one LMDB ({os.path.getsize(db / 'data.mdb') / MB:,.0f} MB, hot page cache)"
    )
    return db, args.images, data


# -- loader-only rows -------------------------------------------------------------------------------


def dali_options(args: argparse.Namespace, load: float) -> dict[str, Any]:
    """``make_dali_loader`` options as train.py sets them for these flags (fp16 NHWC output on a GPU)."""
    return dict(
        device_id=None if args.cpu else 0,
        num_threads=args.dali_threads,
        py_workers=args.py_workers,
        hw_decoder_load=load,
        crop=args.crop,
        half=not args.cpu,
        channels_last=True,
    )


def dali_how(args: argparse.Namespace, load: float) -> str:
    options = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in dali_options(args, load).items() if k != "crop"
    )
    return f"`make_dali_loader({options})`, {'CPU decode (--cpu)' if args.cpu else 'mixed decode'}"


def dali_contender(args: argparse.Namespace, db: Path, load: float) -> Any:
    """The trainer's DALI loader at this hw_decoder_load."""
    from bench.bench_loaders import Contender
    from dali_pipeline import make_dali_loader

    options = dali_options(args, load)
    return Contender(
        f"dali_hw{load:g}",
        f"DALI pipeline alone, hw_decoder_load {load:g}",
        dali_how(args, load),
        lambda seed: make_dali_loader(db, args.batch, train=True, seed=seed, **options),
    )


def torch_how(args: argparse.Namespace) -> str:
    device = "cpu" if args.cpu else "cuda:0"
    return (
        f"`make_torch_loader(workers={args.torch_workers}, device={device}, channels_last=True)`: PIL decode, "
        f"RandomResizedCrop, flip, ToTensor, Normalize, {'' if args.cpu else 'pinned '}copy to the device"
    )


def torch_contender(args: argparse.Namespace, db: Path) -> Any:
    """The trainer's torchvision loader, batches moved to the device as train.py does."""
    import torch

    from bench.bench_loaders import Contender
    from lmdb_io.torch_loader import make_torch_loader

    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    return Contender(
        "torch",
        f"torchvision DataLoader alone, {args.torch_workers} workers",
        torch_how(args),
        lambda seed: make_torch_loader(
            db,
            args.batch,
            train=True,
            seed=seed,
            workers=args.torch_workers,
            device=device,
            crop=args.crop,
            channels_last=True,
        ),
    )


def time_loader(contender: Any, args: argparse.Namespace, data: Data) -> dict[str, Any]:
    """Median images/s over ``--runs`` epochs of a fresh loader each (bench_loaders.run_rounds)."""
    from bench.bench_loaders import run_rounds
    from lmdb_io.shard import epoch_plan

    sync = None
    if not args.cpu:
        import torch

        sync = torch.cuda.synchronize

    def expected(seed: int) -> list[int]:
        return epoch_plan(data.length, 0, 1, 0, seed, True, args.batch, True).indices.tolist()

    rounds = run_rounds(
        [contender],
        args.runs,
        args.batch,
        args.warmup_batches,
        expected,
        cores=len(os.sched_getaffinity(0)),
        max_foreign=1.0,
        sync=sync,
    )
    timings = rounds.used_timings(contender.key)
    return {
        "images_per_s": rounds.median_rate(contender.key),
        "runs": [
            {"images_per_s": t.rate, "timed_images": t.images, "seconds": t.seconds, "host_cores_used": t.cores_used}
            for t in timings
        ],
    }


def release_dali_memory() -> None:
    """Hand DALI's and torch's cached device memory back before the training subprocesses start."""
    try:
        import torch
        from nvidia.dali import backend

        backend.ReleaseUnusedMemory()
        torch.cuda.empty_cache()
    except Exception:  # best effort: an older DALI without ReleaseUnusedMemory, say
        pass


# -- training rows ----------------------------------------------------------------------------------


def train_command(args: argparse.Namespace, arch: str, variant: str, db: Path | None, out: Path) -> list[str]:
    """train.py's command line: the same model flags for every variant, then the variant's data flags."""
    cmd = [
        sys.executable,
        str(TRAIN_PY),
        "-a",
        arch,
        "-b",
        str(args.batch),
        "--crop-size",
        str(args.crop),
        "--amp",
        "bf16",
        "--channels-last",
        "--max-steps",
        str(args.steps),
        "--print-freq",
        str(args.print_freq),
        "--device",
        "cpu" if args.cpu else "cuda",
        "--output-dir",
        str(out),
    ]
    return cmd + variant_flags(args, variant, db)


def variant_flags(args: argparse.Namespace, variant: str, db: Path | None) -> list[str]:
    if variant == "synthetic":
        return ["--synthetic"]
    data = ["--loader", variant, "--lmdb", "--train", str(db)]
    if variant == "dali":
        return data + [
            "-j",
            str(args.py_workers),
            "--dali-threads",
            str(args.dali_threads),
            "--hw-decoder-load",
            f"{args.hw_decoder_load:g}",
        ]
    return data + ["-j", str(args.torch_workers)]


def run_subprocess(cmd: list[str], out: Path, timeout: float) -> None:
    """Run ``cmd`` in its own process group with stdout/stderr in ``out``; ``RowFailure`` on a non-zero
    exit (the last line of its stderr) or on timeout (the whole group is killed)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with open(out / "stdout.txt", "wb") as stdout, open(out / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RowFailure(f"timed out after {timeout:.0f} s (--budget)") from None
    if code != 0:
        last = one_line((out / "stderr.txt").read_text(errors="replace"))
        raise RowFailure(f"train.py exited {code}: {last or '(no stderr)'}")


def steady_windows(log: Path, batch: int) -> dict[str, Any]:
    """Images/s and data-wait over the print windows of ``log.jsonl`` after the first (warm-up) one,
    each window weighted by its duration."""
    if not log.is_file():
        raise RowFailure(f"train.py exited 0 but wrote no {log.name}")
    windows, previous = [], 0
    for line in log.read_text().splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("event") != "train":
            continue
        images = (event["step"] - previous) * batch * event.get("world_size", 1)
        seconds = images / event["images_per_s"]
        windows.append(
            {"last_step": event["step"], "images": images, "seconds": seconds, "waited": event["data_wait"] * seconds}
        )
        previous = event["step"]
    kept = windows[1:]
    if not kept:
        raise RowFailure(f"{len(windows)} print window(s) in log.jsonl: none after the warm-up one; raise --steps")
    seconds = sum(w["seconds"] for w in kept)
    return {
        "images_per_s": sum(w["images"] for w in kept) / seconds,
        "data_wait": sum(w["waited"] for w in kept) / seconds,
        "steps": f"{windows[0]['last_step'] + 1}-{kept[-1]['last_step']}",
        "windows": windows,
    }


def time_training(args: argparse.Namespace, arch: str, variant: str, data: Data, timeout: float) -> dict[str, Any]:
    """One train.py run; its steady-state numbers."""
    out = data.work / "runs" / f"{arch}-{variant}"
    cmd = train_command(args, arch, variant, data.db, out)
    run_subprocess(cmd, out, timeout)
    return {**steady_windows(out / "log.jsonl", args.batch), "command": " ".join(cmd)}


# -- the gpu test tier ------------------------------------------------------------------------------

OUTCOMES = ("passed", "failed", "error", "xfailed", "skipped")
VERBOSE_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
STARTED_LINE = re.compile(r"^(\S+::\S+) ", re.MULTILINE)
PYTEST_EXIT = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}


def tests_command(junit: Path, basetemp: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        GPU_TESTS,
        "-v",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        f"--basetemp={basetemp}",
    ]


def junit_cases(path: Path) -> list[dict[str, str]]:
    """Each test of a pytest JUnit XML report: its id, outcome (one of ``OUTCOMES``) and message."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = ("failed" if child.tag == "failure" else "error"), child.get("message", "")
                break
            if child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, message = ("xfailed" if xfail else "skipped"), child.get("message", "")
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        cases.append({"test": test, "outcome": outcome, "message": one_line(message)})
    return cases


def outcome_counts(cases: Sequence[dict[str, str]], seconds: float) -> str:
    counts = Counter(c["outcome"] for c in cases)
    return f"{', '.join(f'{counts[o]} {o}' for o in OUTCOMES if counts[o]) or 'no tests'} in {seconds:.0f} s"


def run_gpu_tests(args: argparse.Namespace, work: Path, timeout: float) -> dict[str, Any]:
    """The gpu test tier in a pytest subprocess, in its own process group (killed whole at ``timeout``).
    All passed, xfailed or skipped: the row's result is the counts and seconds; a failed test, a pytest
    error or the timeout raises ``RowFailure`` with them."""
    args.out.mkdir(parents=True, exist_ok=True)
    output, junit = args.out / "gpu_tests.txt", args.out / "gpu_tests.xml"
    junit.unlink(missing_ok=True)
    cmd = tests_command(junit, work / "pytest")
    started = time.monotonic()
    code: int | None
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=tests_env(args.cpu), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.monotonic() - started
    text = output.read_text(errors="replace")
    detail: dict[str, Any] = {
        "command": " ".join(cmd),
        "exit_code": code,
        "seconds": seconds,
        "output": str(output),
        "tail": text.splitlines()[-40:],
    }
    if code is None:
        finished = VERBOSE_LINE.findall(text)
        detail["tests"] = [{"test": t, "outcome": o} for t, o in finished]
        started_tests = STARTED_LINE.findall(text)
        running = started_tests[-1] if len(started_tests) > len(finished) else "start-up or teardown"
        raise RowFailure(
            one_line(f"timed out after {timeout:.0f} s (--tests-budget) in {running}; {len(finished)} finished"),
            detail,
        )
    cases = junit_cases(junit) if junit.is_file() else []
    detail["tests"] = cases
    counts = outcome_counts(cases, seconds)
    if code == 0:
        reasons = sorted({c["message"] for c in cases if c["outcome"] == "skipped"})
        return {"result": one_line(counts + (f" ({'; '.join(reasons)})" if reasons else "")), **detail}
    failed = [c for c in cases if c["outcome"] in ("failed", "error")]
    if failed:
        first = failed[0]
        raise RowFailure(one_line(f"{counts}; {first['test'].rsplit('::', 1)[-1]}: {first['message']}"), detail)
    meaning = PYTEST_EXIT.get(code, "")
    raise RowFailure(one_line(f"pytest exited {code}{f' ({meaning})' if meaning else ''}: {one_line(text)}"), detail)


def tests_check(args: argparse.Namespace, work: Path) -> Check:
    hidden = " with CUDA hidden (`CUDA_VISIBLE_DEVICES=`, --cpu)" if args.cpu else ""
    return Check(
        Row("tests", "gpu_tier", "gpu test tier", f"`python -m pytest -m gpu {GPU_TESTS}`{hidden}"),
        ("torch", "pytest", "tests"),
        1.0 if args.cpu else MIN_SECONDS["tests"],
        lambda left: run_gpu_tests(args, work, min(left, args.tests_budget)),
    )


# -- rows and the table -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``status`` is ok, not run or failed."""

    kind: str  # tests | loader | train
    key: str
    what: str
    how: str
    status: str = "ok"
    reason: str = ""
    images_per_s: float | None = None
    data_wait: float | None = None
    ratio: float | None = None
    ratio_to: str = ""
    seconds: float = 0.0
    result: str = ""  # a row without images/s (the test tier): what it found
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Check:
    """A planned row: what it needs, the least budget it needs, and how to measure it."""

    row: Row
    needs: tuple[str, ...]
    min_seconds: float
    measure: Callable[[float], dict[str, Any]]  # seconds left -> images_per_s or result, [data_wait], ...


def built_db(data: Data) -> Path:
    """``data.db`` for a row that needs "db" (run_check runs those only once it is built)."""
    assert data.db is not None
    return data.db


def time_dali_loader(args: argparse.Namespace, data: Data, load: float, left: float) -> dict[str, Any]:
    """The DALI loader row at one hw_decoder_load (``left``, the seconds left, is not used)."""
    return time_loader(dali_contender(args, built_db(data), load), args, data)


def loader_checks(args: argparse.Namespace, data: Data) -> list[Check]:
    """A DALI row per ``--hw-loads`` value, then the torchvision loader."""
    least = 1.0 if args.cpu else MIN_SECONDS["loader"]
    checks = [
        Check(
            Row("loader", f"dali_hw{load:g}", f"DALI pipeline alone, hw_decoder_load {load:g}", dali_how(args, load)),
            ("torch", "gpu", "lmdb", "dali", "db"),
            least,
            partial(time_dali_loader, args, data, load),
        )
        for load in args.hw_loads
    ]
    checks.append(
        Check(
            Row("loader", "torch", f"torchvision DataLoader alone, {args.torch_workers} workers", torch_how(args)),
            ("torch", "gpu", "torchvision", "lmdb", "db"),
            least,
            lambda left: time_loader(torch_contender(args, built_db(data)), args, data),
        )
    )
    return checks


def train_checks(args: argparse.Namespace, data: Data) -> list[Check]:
    """For each ``--archs`` model: train.py on synthetic batches, with the DALI loader, with the torch one."""
    least = 1.0 if args.cpu else MIN_SECONDS["train"]
    labels = {"synthetic": "synthetic batches (no loader)", "dali": "DALI loader", "torch": "torchvision loader"}
    checks = []
    for arch in args.archs:
        for variant in VARIANTS:
            # train.py imports lmdb_io (lmdb, xxhash) even for --synthetic; dali_pipeline needs it too
            needs = ("torch", "gpu", "torchvision", "lmdb", arch) + (() if variant == "synthetic" else ("db",))
            needs += ("dali",) if variant == "dali" else ()
            how = "`train.py " + " ".join(variant_flags(args, variant, Path("DB"))) + "`"
            checks.append(
                Check(
                    Row("train", f"{arch}-{variant}", f"training {arch}, {labels[variant]}", how),
                    needs,
                    least,
                    partial(time_training, args, arch, variant, data),
                )
            )
    return checks


def run_check(check: Check, env: Environment, deadline: float, budget: float) -> Row:
    """Measure one row, or say why it was not run or how it failed; never raises."""
    row = check.row
    left = deadline - time.monotonic()
    reason = env.why_not(check.needs) or (
        f"time budget: {left:.0f} s of --budget left, this row needs about {check.min_seconds:.0f}"
        if left < check.min_seconds
        else None
    )
    if reason:
        row.status, row.reason = "not run", reason
        return row
    started = time.monotonic()
    try:
        result = check.measure(min(left - 5, budget / 2))  # no row may take more than half the budget
        row.images_per_s, row.data_wait = result.pop("images_per_s", None), result.pop("data_wait", None)
        row.result = result.pop("result", "")
        row.detail = result
    except (Exception, SystemExit) as e:  # SystemExit: the bench/ helpers report failures that way
        row.status, row.reason = "failed", str(e) if isinstance(e, RowFailure) else describe(e)
        row.detail = e.detail if isinstance(e, RowFailure) and e.detail else {"traceback": traceback.format_exc()}
    row.seconds = time.monotonic() - started
    return row


def set_ratios(rows: Sequence[Row]) -> None:
    """Training rows: ratio to the same arch's synthetic run; loader rows: ratio to the best loader."""
    loaders = [r for r in rows if r.kind == "loader" and r.images_per_s]
    best = max(loaders, key=lambda r: r.images_per_s or 0.0, default=None)  # (all set: filtered above)
    for r in rows:
        base = (
            best
            if r.kind == "loader"
            else next((s for s in rows if s.key == r.key.rsplit("-", 1)[0] + "-synthetic" and s.images_per_s), None)
        )
        if r.images_per_s and base is not None and base.images_per_s:  # (always set: filtered)
            r.ratio = r.images_per_s / base.images_per_s
            r.ratio_to = "best loader" if r.kind == "loader" else "synthetic"


def shown(row: Row) -> str:
    """A row's result: images/s, or what it found (the test tier), or why it was not run or failed."""
    if row.status != "ok":
        return f"{row.status}: {row.reason}"
    return f"{row.images_per_s:,.0f}" if row.images_per_s is not None else row.result


def render(rows: Sequence[Row], title: str) -> str:
    lines = [title, "", "| what | how | images/s (tests: result) | ratio | data-wait |", "|---|---|---|---|---|"]
    for r in rows:
        rate = shown(r)
        ratio = f"{r.ratio:.2f}x {r.ratio_to}" if r.ratio is not None else ""
        measured = r.status == "ok" and r.images_per_s is not None
        wait = f"{100 * r.data_wait:.1f} %" if r.data_wait is not None else ("n/a" if measured else "")
        steps = f", steps {r.detail['steps']}" if "steps" in r.detail else ""
        lines.append(f"| {r.what} | {r.how}{steps} | {rate} | {ratio} | {wait} |")
    return "\n".join(lines)


def title(env: Environment, args: argparse.Namespace, data: str, batches: int) -> str:
    sync = "torch.cuda.synchronize() before each clock read, " if not args.cpu else ""
    return (
        f"### gpu_check: gpu test tier, DALI pipeline, torchvision loader and train.py"
        f"{' (CPU DRY RUN)' if args.cpu else ''}\n\n"
        f"{machine_line(env.info, args.cpu)}\n"
        f"Test tier (first): `python -m pytest -m gpu {GPU_TESTS}` in a subprocess with this interpreter and "
        f"PYTHONPATH{', CUDA hidden' if args.cpu else ''}, at most {args.tests_budget:.0f} s; output in "
        f"OUT/gpu_tests.txt.\n"
        f"Data: {data}.\n"
        f"Loader-only rows: batch {args.batch}, crop {args.crop}, one train epoch per run ({batches} batches), "
        f"first {args.warmup_batches} untimed, {sync}median of {args.runs} run(s), no model; ratio to the best "
        f"loader.\n"
        f"Training rows: `python train.py -a ARCH -b {args.batch} --crop-size {args.crop} --amp bf16 "
        f"--channels-last --max-steps {args.steps} --print-freq {args.print_freq}` plus the flags shown (DB: the "
        f"LMDB above); images/s and data-wait from log.jsonl over the print windows after the first (warm-up); "
        f"ratio to the same model on --synthetic batches (which have 1000 classes)."
    )


def summary(rows: Sequence[Row]) -> str:
    """The final line: how many rows ran, and why the others did not."""
    reasons: dict[str, int] = {}
    for r in rows:
        if r.status == "not run":
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    failed = sum(r.status == "failed" for r in rows)
    measured = sum(r.status == "ok" for r in rows)
    skipped = "; ".join(f"{n} x {reason}" for reason, n in reasons.items()) or "nothing"
    return f"{PROG}: {measured} of {len(rows)} rows measured, {failed} failed; skipped: {skipped}"


def write_results(out: Path, result: dict[str, Any]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    except OSError as e:
        log(f"cannot write {out / 'gpu_check.json'}: {describe(e)}")


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# -- main -------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    values = [float(s) for s in text.split(",") if s.strip()]
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of shares in [0, 1]")
    return list(dict.fromkeys(values))


def _names(text: str) -> list[str]:
    values = [s.strip() for s in text.split(",") if s.strip()]
    if not values:
        raise argparse.ArgumentTypeError("a comma-separated list of torchvision model names")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(
        prog="gpu_check.py",
        description=__doc__.split("\n\n")[0],
        epilog="Defaults: --images 16384 --steps 60 --print-freq 20 --runs 1 --tests-budget 150 --budget 360 "
        "(--quick: --images 8192 --steps 30 --print-freq 10). --cpu: --images 64 --batch 8 --crop 64 --steps 4 "
        "--print-freq 2 --archs resnet18 --py-workers 0 --warmup-batches 2 --tests-budget 120 --budget 600, "
        "device cpu.",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="JPEG folder (DIR/<class>/<image>, or flat: one class); default: generated JPEGs",
    )
    p.add_argument(
        "--work",
        type=Path,
        metavar="DIR",
        help="where JPEGs, the LMDB and train.py runs go (default: a temp dir, deleted after)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        default=Path(os.environ.get("OUT") or REPO / "bench" / "results"),
        help="folder for gpu_check.json (default: $OUT if set, else bench/results)",
    )
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU with tiny sizes (DALI CPU operators)")
    p.add_argument("--quick", action="store_true", help="half the images and steps")
    p.add_argument("--images", type=int, help="JPEGs in the LMDB (loader-only epoch = images / batch batches)")
    p.add_argument("--steps", type=int, help="train.py --max-steps for each training row")
    p.add_argument("--print-freq", type=int, help="train.py --print-freq (the first window is warm-up)")
    p.add_argument("--batch", type=int, help="batch size (default 256)")
    p.add_argument("--crop", type=int, help="crop size (default 224)")
    p.add_argument("--archs", type=_names, help="models for the training rows (default resnet50,resnet18)")
    p.add_argument(
        "--hw-loads",
        type=_floats,
        default=[0.65, 1.0],
        metavar="X,X",
        help="hw_decoder_load values for the DALI loader-only rows (default 0.65,1.0)",
    )
    p.add_argument("--hw-decoder-load", type=float, default=0.65, help="train.py --hw-decoder-load (default 0.65)")
    p.add_argument(
        "--py-workers",
        type=int,
        help="DALI source processes, loader-only and train.py -j (default 4, train.py's own default on a GPU)",
    )
    p.add_argument(
        "--dali-threads",
        type=int,
        default=min(8, cores),
        help=f"DALI CPU threads (default min(8, cores) = {min(8, cores)}, train.py's default)",
    )
    p.add_argument(
        "--torch-workers",
        type=int,
        default=cores,
        help=f"DataLoader workers, loader-only and train.py -j (default: usable cores, {cores})",
    )
    p.add_argument("--runs", type=int, default=1, help="loader-only epochs per row, median reported (default 1)")
    p.add_argument("--warmup-batches", type=int, help="untimed loader-only batches per epoch (default 5)")
    p.add_argument(
        "--budget",
        type=float,
        help="seconds for the whole run, test tier included; rows that would not fit are not run",
    )
    p.add_argument(
        "--tests-budget",
        type=float,
        help=f"seconds for the gpu test tier ({GPU_TESTS}, run first; 0: not run); past it the row says timed out",
    )
    args = p.parse_args(argv)
    fill_defaults(args)
    if (
        min(
            args.images,
            args.steps,
            args.print_freq,
            args.batch,
            args.crop,
            args.runs,
            args.warmup_batches,
            args.dali_threads,
            args.torch_workers,
        )
        < 1
        or args.py_workers < 0
    ):
        p.error("counts must be positive (--py-workers may be 0)")
    if args.steps < 2 * args.print_freq:
        p.error("--steps must be at least 2 x --print-freq: the first print window is warm-up, left out")
    if args.images // args.batch <= args.warmup_batches:
        p.error(
            f"--images {args.images} gives {args.images // args.batch} batches of {args.batch}: need more than "
            f"--warmup-batches ({args.warmup_batches})"
        )
    if not 0 <= args.hw_decoder_load <= 1:
        p.error("--hw-decoder-load must be between 0 and 1")
    if args.tests_budget < 0:
        p.error("--tests-budget must be 0 (do not run the test tier) or more")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: not a directory")
    return args


def fill_defaults(args: argparse.Namespace) -> None:
    """Mode-dependent defaults for the flags left unset."""
    if args.cpu:
        defaults = dict(
            images=64,
            batch=8,
            crop=64,
            steps=4,
            print_freq=2,
            archs=["resnet18"],
            py_workers=0,
            warmup_batches=2,
            tests_budget=120.0,
            budget=600.0,
        )
    else:
        defaults = dict(
            images=16384,
            batch=256,
            crop=224,
            steps=60,
            print_freq=20,
            archs=["resnet50", "resnet18"],
            py_workers=4,
            warmup_batches=5,
            tests_budget=150.0,  # the tier takes 60-90 s on an H100
            budget=360.0,  # 210 s for the measured rows, plus the tier's 150
        )
        if args.quick:
            defaults.update(images=8192, steps=30, print_freq=10)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def setup_data(args: argparse.Namespace, env: Environment, work: Path) -> Data:
    """Build the LMDB; on failure record why under ``missing['db']``."""
    data = Data(work)
    unmet = env.why_not(("torch", "gpu", "lmdb"))  # every row that reads the LMDB needs these
    if unmet:
        env.missing["db"], data.description = unmet, f"none (not built: {unmet})"
        return data
    started = time.monotonic()
    try:
        data.db, data.length, data.description = prepare_database(args, work, env.info["cores_usable"])
    except (Exception, SystemExit) as e:
        env.missing["db"] = f"data preparation failed ({describe(e)})"
        data.description = f"none ({env.missing['db']})"
        return data
    log(f"data ready in {time.monotonic() - started:.0f} s: {data.description}")
    return data


def measure(args: argparse.Namespace, env: Environment, work: Path, deadline: float) -> dict[str, Any]:
    """The gpu test tier, then data, then every measured row (results rewritten after each), the table;
    returns the JSON document."""
    result: dict[str, Any] = {
        "machine": env.info,
        "missing": env.missing,
        "data": "not built yet",
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    rows: list[Row] = []

    def record(row: Row, heading: str, position: str) -> None:
        rows.append(row)
        unit = " img/s" if row.status == "ok" and row.images_per_s is not None else ""
        log(f"[{position}] {row.what}: {shown(row)}{unit} ({row.seconds:.0f} s)")
        set_ratios(rows)
        result.update(rows=[asdict(r) for r in rows], table=render(rows, heading), summary=summary(rows))
        write_results(args.out, result)

    # the test tier first: it says at once whether the GPU code paths work, and needs none of the data below
    heading = title(env, args, "not built yet (the test tier runs first)", args.images // args.batch)
    record(run_check(tests_check(args, work), env, deadline, args.budget), heading, "tests")
    data = setup_data(args, env, work)
    result["data"] = data.description
    checks = loader_checks(args, data) + train_checks(args, data)
    heading = title(env, args, data.description, (data.length or args.images) // args.batch)
    for i, check in enumerate(checks, 1):
        if check.row.kind == "train" and rows and rows[-1].kind == "loader":
            release_dali_memory()
        record(run_check(check, env, deadline, args.budget), heading, f"{i}/{len(checks)}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget
    env = probe(args.cpu, args.archs)
    if args.tests_budget == 0:
        env.missing["tests"] = "--tests-budget 0"
    print(machine_line(env.info, args.cpu), flush=True)
    for need, reason in env.missing.items():
        log(f"missing {need}: {reason}")
    temp = args.work is None
    work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if temp else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(args, env, work, deadline)
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + result["table"] + "\n", flush=True)
    log(f"wrote {args.out / 'gpu_check.json'}")
    print(result["summary"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
