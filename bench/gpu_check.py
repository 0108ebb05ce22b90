"""One command for a GPU machine: the gpu test tier, the DALI pipeline, the torchvision loader and train.py,
in one table (and this GPU's section of bench/RESULTS.md).

First the gpu test tier, ``python -m pytest -m gpu tests/test_gpu.py``, in a subprocess within
``--tests-budget`` seconds: its row gives the outcome counts (per-test outcomes in the JSON, pytest's output
in ``OUT/gpu_tests.txt``). Then ``--images`` JPEGs (``--data DIR``, or generated) go into one LMDB, and on
GPU 0 it measures:

1. the DALI train pipeline alone (``make_dali_loader``, mixed decode, float16 NHWC as train.py sets it) at
   every ``--hw-loads`` x ``--py-workers`` pair, the same graph fed the same bytes from memory
   (``MemorySource``) at each load, and the torchvision DataLoader alone (channels-last, as train.py); one
   epoch per run, the first ``--warmup-batches`` untimed (the torchvision loader: at least its workers x
   prefetch factor + 1, the batches its workers finish before the first is taken), ``torch.cuda.synchronize()``
   before each clock read;
2. training images/s and data-wait of each ``--archs`` model through train.py (``-b --amp bf16
   --channels-last``) with ``--synthetic``, ``--loader dali --lmdb`` and ``--loader torch --lmdb``, read
   with bench.lib.runlog's one warm-up rule.

Every row that touches the GPU runs in a process of its own (``python -m bench.gpu_row``; train.py and the
test tier are processes anyway) within ``--row-budget`` seconds, killed whole after it: a hung pipeline
costs its row ("not run: timed out after N s"), never the rest, and this process never creates a CUDA
context that would hold GPU memory through the training rows. When ``/dev/shm`` holds less than the
torchvision loader's workers can have in flight, the table says so (DataLoader workers pass batches there).

A missing GPU, DALI, lmdb or model turns the rows that need it into "not run: <reason>"; failures are rows
too; the exit status is 0. ``--budget`` bounds the whole run: rows that would not fit are not run. ``--cpu``
is a dry run of the same code on the CPU with tiny sizes (the test tier with CUDA hidden), which leaves
RESULTS.md alone. Examples::

    python -m bench.gpu_check                      # at most 9 minutes (--budget 540) on one H100/H200
    python -m bench.gpu_check --quick --data /data/imagenet/train --out /tmp/res
    python -m bench.gpu_check --cpu --out /tmp/dry
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from subprocess import STDOUT
from typing import Any

import psutil

from bench.lib import data, machine, results, runlog
from bench.lib.table import Row, Table, yes_no
from bench.lib.timing import DATALOADER_PREFETCH, Contender, plan_indices, run_rounds, untimed_batches

PROG = "gpu_check"
GPU_TESTS = "tests/test_gpu.py"
MIN_SECONDS = {"tests": 30.0, "loader": 15.0, "train": 25.0}  # budget a row needs on a GPU to be started
PROBE_SECONDS = 120.0  # the GPU probe's child: torch and CUDA start-up
GIB = 1 << 30
OUTCOMES = ("passed", "failed", "error", "xfailed", "skipped")
PYTEST_EXIT = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def one_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit | runlog.RunFailed):  # how bench.lib fails: a command's stderr last
        return one_line(str(exc)) or f"{type(exc).__name__} {exc}"
    return one_line(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")


# -- environment ------------------------------------------------------------------------------------


def tests_env(cpu: bool) -> dict[str, str]:
    """The test tier's environment: the repo first on PYTHONPATH; ``--cpu`` hides every GPU."""
    pythonpath = os.pathsep.join(p for p in (str(data.REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}


def probe(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """Machine and versions, and for each unmet need (torch, gpu, lmdb, torchvision, ARCH, dali, pytest,
    tests) the one-line reason; never raises."""
    info, missing = machine.describe(gpu=False), dict[str, str]()
    for need, module in (("torch", "torch"), ("lmdb", "xxhash"), ("lmdb", "lmdb"), ("torchvision", "torchvision")):
        try:
            __import__(module)
        except Exception as e:
            missing.setdefault(need, f"{module} not importable ({describe(e)})")
    if "torch" in missing:
        missing.update({k: missing["torch"] for k in ("gpu", "dali", "torchvision", "lmdb")})
    elif args.cpu:
        info["gpu_note"] = "none (--cpu dry run)"
    else:
        try:
            info |= in_child({"kind": "probe"}, PROBE_SECONDS)
        except RowFailed as e:
            missing["gpu"] = f"the GPU probe failed ({e})"
        if "gpu" not in info:
            missing.setdefault(
                "gpu", "no CUDA GPU visible to torch (torch.cuda.is_available() is False); --cpu runs the dry run"
            )
    if "torchvision" not in missing:
        import torchvision

        names = set(torchvision.models.list_models(module=torchvision.models))
        missing |= {a: f"torchvision {torchvision.__version__} has no model {a}" for a in args.archs if a not in names}
    try:
        import lmdb_dali_train.loaders.dali_loader  # noqa: F401 (DALI and the loader layer)

        if not args.cpu and "gpu" not in missing and not info.get("dali_cuda_devices"):
            missing["dali"] = "DALI sees no CUDA device (driver too old for this DALI wheel?)"
    except Exception as e:
        missing.setdefault("dali", f"DALI or lmdb_dali_train.loaders.dali_loader not importable ({describe(e)})")
    env = tests_env(args.cpu)
    proc = subprocess.run([sys.executable, "-c", "import pytest"], cwd=data.REPO, env=env, capture_output=True)
    if proc.returncode:
        missing["pytest"] = f"pytest not installed ({one_line(proc.stderr.decode()) or f'exit {proc.returncode}'})"
    if args.tests_budget == 0:
        missing["tests"] = "--tests-budget 0"
    return info, missing


# -- the gpu test tier ------------------------------------------------------------------------------


def junit_cases(path: Path) -> list[dict[str, str]]:
    """Each test of a pytest JUnit XML report: id, outcome (one of OUTCOMES) and message."""
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
        test = f"{case.get('classname')}::{case.get('name')}"
        cases.append({"test": test, "outcome": outcome, "message": one_line(message)})
    return cases


def run_gpu_tests(args: argparse.Namespace, work: Path, left: float) -> dict[str, Any]:
    """The tier in its own process group (killed whole at its timeout); its counts, or ``RowFailed``."""
    timeout = min(left, args.tests_budget)
    args.out.mkdir(parents=True, exist_ok=True)
    output, junit = args.out / "gpu_tests.txt", args.out / "gpu_tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", GPU_TESTS, "-v", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}", f"--basetemp={work / 'pytest'}"]
    started, code = time.monotonic(), None
    with open(output, "wb") as sink:
        env = tests_env(args.cpu)
        proc = subprocess.Popen(cmd, cwd=data.REPO, env=env, stdout=sink, stderr=STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds, text = time.monotonic() - started, output.read_text(errors="replace")
    detail: dict[str, Any] = {"command": " ".join(cmd), "exit_code": code, "seconds": seconds, "output": str(output)}
    if code is None:
        finished = re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", text, re.M)
        begun = re.findall(r"^(\S+::\S+) ", text, re.M)
        running = begun[-1] if len(begun) > len(finished) else "start-up or teardown"
        detail["tests"] = [{"test": t, "outcome": o} for t, o in finished]
        raise RowFailed(f"timed out after {timeout:.0f} s (--tests-budget) in {running}; {len(finished)} done", detail)
    detail["tests"] = cases = junit_cases(junit) if junit.is_file() else []
    counts = Counter(c["outcome"] for c in cases)
    found = f"{', '.join(f'{counts[o]} {o}' for o in OUTCOMES if counts[o]) or 'no tests'} in {seconds:.0f} s"
    if code == 0:
        reasons = sorted({c["message"] for c in cases if c["outcome"] == "skipped"})
        return {"result": one_line(found + (f" ({'; '.join(reasons)})" if reasons else "")), **detail}
    failed = [c for c in cases if c["outcome"] in ("failed", "error")]
    if failed:
        raise RowFailed(one_line(f"{found}; {failed[0]['test'].rsplit('::', 1)[-1]}: {failed[0]['message']}"), detail)
    raise RowFailed(one_line(f"pytest exited {code} ({PYTEST_EXIT.get(code, '?')}): {one_line(text)}"), detail)


# -- loader rows ------------------------------------------------------------------------------------


class RowFailed(Exception):
    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


@dataclass
class Data:
    """The LMDB the loader and training rows read (None until built, or when it could not be)."""

    work: Path
    db: Path | None = None
    length: int = 0
    memory: Any = None  # the MemorySource of the in-memory rows (built in their own process)
    shm: str = ""  # a warning when /dev/shm is too small for the torchvision loader's workers
    description: str = "not built yet (the test tier runs first)"


def dali_options(args: argparse.Namespace, workers: int, load: float) -> dict[str, Any]:
    """``PipelineOptions`` as train.py sets them for these flags (fp16 NHWC output on a GPU)."""
    opts = dict(device_id=None if args.cpu else 0, num_threads=args.dali_threads, py_workers=workers)
    return opts | dict(hw_decoder_load=load, fp16_output=not args.cpu, channels_last=True)


def contender(args: argparse.Namespace, d: Data, key: str) -> Contender:
    """``dali-wW-hwL``, ``memory-hwL`` or ``torch``: a loader-only contender over the built database."""
    import torch

    from dali_pipeline.pipelines import PipelineOptions
    from dali_pipeline.source import MemorySource
    from lmdb_dali_train.loaders.dali_loader import DALILoader, make_dali_loader
    from lmdb_dali_train.loaders.torch_loader import make_torch_loader
    from lmdb_io.reading.plan import RankPlan
    from lmdb_io.reading.presets import TrainPreset
    from lmdb_io.reading.spec import ReadSpec

    assert d.db is not None  # run_check runs the rows that need "db" only once it is built
    db, batch, crop = d.db, args.batch, args.crop
    if key == "torch":
        device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
        return Contender(
            key,
            "",
            "",
            lambda seed: make_torch_loader(
                ReadSpec(path=db, batch_size=batch, train=True, seed=seed, crop=crop),
                device=device,
                dtype=torch.float16,
                channels_last=True,
                workers=args.torch_workers,
            ),
        )
    load = float(key.rsplit("-hw", 1)[1])
    if key.startswith("memory"):

        def make(seed: int) -> DALILoader:
            source = MemorySource(d.memory.payloads, d.memory.labels, RankPlan(d.length, batch, seed=seed))
            opts = PipelineOptions(batch_size=batch, seed=seed, **dali_options(args, 0, load))
            return DALILoader(source, opts, TrainPreset(crop))

        return Contender(key, "", "", make)
    workers = int(key.split("-w")[1].split("-")[0])
    return Contender(
        key,
        "",
        "",
        lambda seed: make_dali_loader(
            ReadSpec(path=db, batch_size=batch, train=True, seed=seed, crop=crop),
            device="cpu" if args.cpu else "cuda:0",  # as dali_options: fp16 NHWC output on a GPU
            dtype=torch.float32 if args.cpu else torch.float16,
            channels_last=True,
            dali_threads=args.dali_threads,
            py_workers=workers,
            hw_decoder_load=load,
        ),
    )


def torch_warmup(args: argparse.Namespace) -> int:
    """Untimed batches of the torchvision loader row: its workers hold ``workers x prefetch_factor`` finished
    batches before the first is taken; the clock starts after those are gone."""
    return untimed_batches(args.torch_workers * DATALOADER_PREFETCH, args.warmup_batches)


def time_loader(args: argparse.Namespace, d: Data, key: str) -> dict[str, Any]:
    """Median images/s over ``--runs`` epochs, each on a fresh loader (in a ``bench.gpu_row`` process)."""
    import torch

    sync = None if args.cpu else torch.cuda.synchronize
    warmup = torch_warmup(args) if key == "torch" else args.warmup_batches
    if d.length // args.batch <= warmup:
        raise RowFailed(
            f"an epoch of {d.length // args.batch} batches leaves none after {warmup} warm-up (raise --images)"
        )
    c, order, cores = contender(args, d, key), plan_indices(d.length, args.batch), len(os.sched_getaffinity(0))
    rounds = run_rounds([c], args.runs, args.batch, warmup, order, cores=cores, sync=sync)
    return {"rate": rounds.median_rate(key), "result": rounds.spread(key), "warmup_batches": warmup, **rounds.raw()}


class RowTimedOut(Exception):
    pass


def in_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python -m bench.gpu_row`` on ``spec`` in its own process group, killed whole after ``timeout`` s
    (``RowTimedOut``); its result, or ``RowFailed`` with its error."""
    with tempfile_pair() as (spec_file, out_file):
        spec_file.write_text(json.dumps(spec, default=str))
        cmd = [sys.executable, "-m", "bench.gpu_row", str(spec_file), str(out_file)]
        env = {**os.environ, "PYTHONPATH": tests_env(False)["PYTHONPATH"]}
        proc = subprocess.Popen(
            cmd, cwd=data.REPO, env=env, stdout=subprocess.PIPE, stderr=STDOUT, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RowTimedOut(f"timed out after {timeout:.0f} s (--row-budget)") from None
        found = json.loads(out_file.read_text()) if out_file.is_file() and out_file.stat().st_size else None
    if found is None or "error" in found:
        why = found["error"] if found else f"exit {proc.returncode}: {one_line(output.decode(errors='replace'))}"
        raise RowFailed(why, {"output": output.decode(errors="replace")[-4000:]})
    return found


@contextlib.contextmanager
def tempfile_pair() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="gpu_row_") as tmp:
        yield Path(tmp) / "spec.json", Path(tmp) / "out.json"


def loader_in_child(args: argparse.Namespace, d: Data, key: str, left: float) -> dict[str, Any]:
    assert d.db is not None  # run_check runs the rows that need "db" only once it is built
    spec = {"kind": "loader", "key": key, "db": str(d.db), "length": d.length, "work": str(d.work)}
    spec["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return in_child(spec, min(left, args.row_budget))


def run_row(spec_path: str, out_path: str) -> int:
    """``bench.gpu_row``'s body: one row measured in this process, its result (or error) as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        if spec["kind"] == "probe":
            found = gpu_facts()
        else:
            args = argparse.Namespace(**spec["args"])
            db = Path(spec["db"])
            d = Data(Path(spec["work"]), db, spec["length"])
            if spec["key"].startswith("memory"):
                from dali_pipeline.source import MemorySource
                from lmdb_io.reading.plan import RankPlan

                d.memory = MemorySource.from_database(db, RankPlan(d.length, args.batch))
            found = time_loader(args, d, spec["key"])
    except (Exception, SystemExit) as e:
        found = {"error": e.args[0] if isinstance(e, RowFailed) else describe(e), "traceback": traceback.format_exc()}
    Path(out_path).write_text(json.dumps(found, default=str))
    return 0


def gpu_facts() -> dict[str, Any]:
    """GPU 0 as torch sees it, and how many CUDA devices DALI sees (the probe, in a child)."""
    info = machine.describe(gpu=True)
    try:
        from nvidia.dali import backend

        info["dali_cuda_devices"] = backend.GetCUDADeviceCount()
    except Exception:  # DALI absent: probe() names it
        pass
    return info


def shm_note(args: argparse.Namespace, d: Data) -> str:
    """A warning when ``/dev/shm`` has less room than the torchvision loader's workers can fill: each holds up
    to ``prefetch_factor`` finished batches there. Empty when it fits or cannot be told."""
    if d.db is None or not os.path.isdir("/dev/shm") or args.torch_workers == 0:
        return ""
    try:
        import torch

        from lmdb_dali_train.loaders.torch_loader import make_torch_loader
        from lmdb_io.reading.spec import ReadSpec

        loader = make_torch_loader(ReadSpec(path=d.db, batch_size=args.batch, train=True, crop=args.crop), workers=0)
        item = loader.items[next(iter(loader.sampler))]  # what a worker hands over for one sample
        per_sample = sum(t.numel() * t.element_size() for t in item if isinstance(t, torch.Tensor))
    except Exception as e:
        return f"/dev/shm: could not size the torchvision loader's batches ({describe(e)})"
    need = args.torch_workers * DATALOADER_PREFETCH * args.batch * per_sample
    free = shutil.disk_usage("/dev/shm").free
    if free >= need:
        return ""
    return (
        f"/dev/shm has {free / GIB:.1f} GiB free, less than the {need / GIB:.1f} GiB the torchvision loader's "
        f"{args.torch_workers} workers x {DATALOADER_PREFETCH} batches can hold there: its rows may fail or "
        f"stall (docker run --shm-size, or fewer --torch-workers)"
    )


# -- planned rows -----------------------------------------------------------------------------------


@dataclass
class Check:
    """A planned row: what it needs, the least budget it needs, and how to measure it (seconds left ->
    rate/result/data_wait and details)."""

    kind: str  # tests | loader | train | derived
    key: str
    row: Row
    needs: tuple[str, ...]
    least: float
    measure: Callable[[float], dict[str, Any]]
    status: str = "ok"
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


def train_flags(args: argparse.Namespace, arch: str, variant: str, db: Path | None) -> list[str]:
    flags = ["-a", arch, "-b", str(args.batch), "--crop-size", str(args.crop), "--amp", "bf16", "--channels-last"]
    flags += [
        "--max-steps",
        str(args.steps),
        "--print-freq",
        str(args.print_freq),
        "--device",
        "cpu" if args.cpu else "cuda",
    ]
    if variant == "synthetic":
        return flags + ["--synthetic"]
    flags += ["--loader", variant, "--lmdb", "--train", str(db)]
    if variant == "dali":
        return flags + ["--dali-threads", str(args.dali_threads), "--hw-decoder-load", f"{args.hw_decoder_load:g}"]
    return flags + ["-j", str(args.torch_workers)]


def time_training(args: argparse.Namespace, d: Data, arch: str, variant: str, left: float) -> dict[str, Any]:
    out = d.work / "runs" / f"{arch}-{variant}"
    s = runlog.steady(runlog.run_train(train_flags(args, arch, variant, d.db), out, left))
    return {"rate": s.images_per_s, "data_wait": s.data_wait, "steps": s.steps}


def plan(args: argparse.Namespace, d: Data) -> list[Check]:
    """The test tier; DALI per load x workers, memory per load, torch; training per arch x variant."""
    cpu, decode, checks = args.cpu, "CPU decode (--cpu)" if args.cpu else "mixed decode", []

    def add(kind: str, key: str, what: str, how: str, needs: tuple[str, ...], measure: Callable | None = None) -> None:
        least = 0.0 if kind == "derived" else 1.0 if cpu else MIN_SECONDS[kind]
        measure = measure or partial(loader_in_child, args, d, key)
        checks.append(Check(kind, key, Row(what, how), needs, least, measure))

    hidden = " with CUDA hidden (`CUDA_VISIBLE_DEVICES=`, --cpu)" * cpu
    tier, tests = partial(run_gpu_tests, args, d.work), f"`python -m pytest -m gpu {GPU_TESTS}`{hidden}"
    add("tests", "tests", "gpu test tier", tests, ("torch", "pytest", "tests"), tier)
    needs, dali_opts = ("torch", "gpu", "lmdb", "dali", "db"), lambda w, load: dali_options(args, w, load).items()
    for load in args.hw_loads:
        for w in args.py_workers:
            opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in dali_opts(w, load))
            what = f"DALI pipeline alone, py_workers {w}, hw_decoder_load {load:g}"
            add("loader", f"dali-w{w}-hw{load:g}", what, f"`make_dali_loader({opts})`, {decode}", needs)
        what = f"DALI pipeline alone, in-memory source, hw_decoder_load {load:g}"
        how = f"`DALILoader(MemorySource)`, same graph, py_workers=0, {decode}"
        add("loader", f"memory-hw{load:g}", what, how, (*needs, "memory"))
    how = "time per image: best `dali` row / `memory` row at its load - 1"
    add("derived", "cost", "LMDB source cost vs memory: best LMDB setting", how, (), lambda left: {})
    device, pinned = ("cpu", "") if cpu else ("cuda:0", "pinned ")
    how = f"`make_torch_loader(workers={args.torch_workers}, device={device}, channels_last=True, dtype=float16)`: "
    how += f"PIL decode, RandomResizedCrop, flip, uint8 from the workers, {pinned}copy, normalize on the device"
    what = f"torchvision DataLoader alone, {args.torch_workers} workers"
    add("loader", "torch", what, how, ("torch", "gpu", "torchvision", "lmdb", "db"))
    labels = {"synthetic": "synthetic", "dali": "DALI loader", "torch": "torchvision loader"}
    for arch, variant in ((a, v) for a in args.archs for v in labels):
        extra = {"synthetic": (), "dali": ("db", "dali"), "torch": ("db",)}[variant]
        needs = ("torch", "gpu", "torchvision", "lmdb", arch, *extra)
        how = "`train.py " + " ".join(train_flags(args, arch, variant, Path("DB"))) + "`"
        measure = partial(time_training, args, d, arch, variant)
        add("train", f"{arch}-{variant}", f"training {arch}, {labels[variant]}", how, needs, measure)
    return checks


def run_check(check: Check, missing: dict[str, str], deadline: float, budget: float) -> None:
    """Measure one row, or say why it was not run or how it failed; never raises."""
    if check.kind == "derived":  # filled in by set_ratios
        return
    left = deadline - time.monotonic()
    reason = next((missing[n] for n in check.needs if n in missing), None)
    if reason is None and left < check.least:
        reason = f"time budget: {left:.0f} s of --budget left, this row needs about {check.least:.0f}"
    if reason:
        check.status, check.row.result = "not run", f"not run: {reason}"
        return
    started = time.monotonic()
    try:
        found = check.measure(min(left - 5, budget / 2))  # no row may take more than half the budget
        check.row.rate, wait = found.pop("rate", None), found.pop("data_wait", None)
        check.row.result = found.pop("result", None) or (f"{check.row.rate:,.0f}" if check.row.rate else "")
        check.row.data_wait = f"{100 * wait:.1f} %" if wait is not None else "n/a" * (check.kind != "tests")
        check.row.how += f", steps {found['steps']}" if "steps" in found else ""
        check.detail = found
    except RowTimedOut as e:  # a hung pipeline, say: this row only
        check.status, check.row.result = "not run", f"not run: {e}"
    except (Exception, SystemExit) as e:
        check.status, check.row.result = "failed", f"failed: {e if isinstance(e, RowFailed) else describe(e)}"
        check.detail = getattr(e, "detail", None) or {"traceback": traceback.format_exc()}
    check.seconds = time.monotonic() - started


def set_ratios(checks: Sequence[Check]) -> None:
    """Loader rows: ratio to the best loader; training rows: to the same model's synthetic run; the cost row."""
    by_key = {c.key: c.row for c in checks if c.status == "ok" and c.row.rate}
    loaders = [c.row for c in checks if c.kind == "loader" and c.key in by_key]
    best = max((r.rate or 0.0 for r in loaders), default=0.0)
    for r in loaders:
        r.ratio = f"{(r.rate or 0.0) / best:.2f}x best loader"
    runlog.ratios_to_synthetic([c.row for c in checks if c.kind == "train"])
    dali = [k for k in by_key if k.startswith("dali-")]
    cost = next((c for c in checks if c.key == "cost"), None)
    if cost is None:
        return
    if dali:
        top = max(dali, key=lambda k: by_key[k].rate or 0.0)
        memory = by_key.get(f"memory-hw{top.rsplit('-hw', 1)[1]}")
        if memory is not None and memory.rate and by_key[top].rate:
            share = memory.rate / (by_key[top].rate or 1.0) - 1
            cost.row.result = f"{by_key[top].rate:,.0f} vs {memory.rate:,.0f} (`{top}`)"
            cost.row.ratio, cost.row.target, cost.row.met = f"{share * 100:+.1f} %", "<= 10 %", yes_no(share <= 0.10)
    if not cost.row.result:
        cost.status, cost.row.result = "not run", "not run: needs a measured DALI row and its in-memory row"


def setup_data(args: argparse.Namespace, missing: dict[str, str], d: Data) -> None:
    """Build the LMDB (the in-memory rows copy it in their own process) and size /dev/shm against the
    torchvision loader's workers; on failure record why under ``missing['db']``."""
    work = d.work
    unmet = next((missing[n] for n in ("torch", "gpu", "lmdb") if n in missing), None)
    if unmet:
        missing["db"] = unmet
        d.description = f"none (not built: {unmet})"
        return
    try:
        source, origin = args.data, f"JPEGs of {args.data}"
        if source is None:
            classes, per_class = (4, 8) if args.cpu else (10, 100)
            source = data.generate_jpegs(work / "generated", classes, per_class, min(10, os.cpu_count() or 1))
            origin = f"JPEGs generated by lmdb_io.demo_images ({classes} classes)"
        prepared = data.prepare_database(source, args.images, work, "--workers", str(len(os.sched_getaffinity(0))))
        d.db, d.length, d.description = prepared.db, args.images, f"{prepared.describe()}; {origin}"
        if prepared.db_bytes * 2 >= psutil.virtual_memory().available:
            missing["memory"] = f"the database ({prepared.db_bytes / 1e6:,.0f} MB) does not fit twice in free memory"
        d.shm = shm_note(args, d)
    except (Exception, SystemExit) as e:
        missing["db"] = f"data preparation failed ({describe(e)})"
        d.description = f"none ({missing['db']})"


def render(args: argparse.Namespace, info: dict[str, Any], d: Data, checks: Sequence[Check]) -> Table:
    sync = "" if args.cpu else "torch.cuda.synchronize() before each clock read, "
    header = (
        f"{'NO GPU: --cpu dry run. ' if args.cpu else ''}{machine.line(info)}\n"
        f"Test tier (first): `python -m pytest -m gpu {GPU_TESTS}` in a subprocess, at most {args.tests_budget:.0f} s; "
        f"output in OUT/gpu_tests.txt.\nData: {d.description}.\n"
        f"Loader-only rows, each in a process of its own killed after {args.row_budget:.0f} s (--row-budget): batch "
        f"{args.batch}, crop {args.crop}, one train epoch per run ({args.images // args.batch} batches), first "
        f"{args.warmup_batches} untimed (torchvision loader: {torch_warmup(args)}, its {args.torch_workers} workers x "
        f"prefetch {DATALOADER_PREFETCH} + 1), {sync}median of {args.runs} run(s), no model.\n"
        + (f"WARNING: {d.shm}.\n" if d.shm else "")
        + f"Training rows: train.py with the flags shown (DB: the LMDB above); {runlog.RULE} Synthetic batches have "
        "1000 classes."
    )
    title = "gpu_check: gpu test tier, DALI pipeline, torchvision loader and train.py" + " (CPU DRY RUN)" * args.cpu
    raw = {"machine": info, "params": {k: str(v) for k, v in vars(args).items()}}
    raw["rows"] = {c.key: {"status": c.status, "seconds": c.seconds, **c.detail} for c in checks}
    return Table(title, header, [c.row for c in checks], raw, {"result": "images/s (tests: result)"})


def summary(checks: Sequence[Check]) -> str:
    reasons = Counter(c.row.result[len("not run: ") :] for c in checks if c.status == "not run")
    failed, measured = sum(c.status == "failed" for c in checks), sum(c.status == "ok" for c in checks)
    skipped = "; ".join(f"{n} x {r}" for r, n in reasons.items()) or "nothing"
    return f"{PROG}: {measured} of {len(checks)} rows measured, {failed} failed; skipped: {skipped}"


def _list(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = [kind(s) for s in text.split(",") if s.strip()]
        if not values or any(not low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"a comma-separated list of values in [{low:g}, {high:g}]")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__.split("\n\n")[0],
        epilog="Defaults: --images 24576 --batch 256 --crop 224 --steps 60 --print-freq 20 --archs resnet50,resnet18 "
        "--py-workers 0,4,8 --warmup-batches 5 --tests-budget 150 --row-budget 120 --budget 540 (--quick: --images "
        "16384 --steps 30 --print-freq 10). --cpu: --images 64 --batch 8 --crop 64 --steps 4 --print-freq 2 --archs "
        "resnet18 --py-workers 0,1 --warmup-batches 2 --tests-budget 120 --budget 600, device cpu.",
    )
    a = p.add_argument
    a("--data", type=Path, metavar="DIR", help="JPEG folder (DIR/<class>/<image>); default: generated")
    a("--work", type=Path, metavar="DIR", help="JPEGs, the LMDB and train.py runs (default: a temp dir)")
    out = Path(os.environ.get("OUT") or data.REPO / "bench" / "results")
    a("--out", type=Path, default=out, help="for gpu_check.json and the tier's output ($OUT, else bench/results)")
    a("--cpu", action="store_true", help="dry run on the CPU with tiny sizes (DALI CPU operators)")
    a("--quick", action="store_true", help="half the images and steps")
    a("--images", type=int, help="JPEGs in the LMDB (loader-only epoch = images / batch batches)")
    a("--steps", type=int, help="train.py --max-steps for each training row")
    a("--print-freq", type=int, help="train.py --print-freq (the first window is warm-up)")
    a("--batch", type=int, help="batch size (default 256)")
    a("--crop", type=int, help="crop size (default 224)")
    a("--archs", type=lambda t: [s for s in t.split(",") if s], help="models of the training rows (resnet50,resnet18)")
    a("--hw-loads", type=_list(float, 0, 1), default=[0.65, 1.0], help="hw_decoder_load of the DALI rows (0.65,1.0)")
    a("--hw-decoder-load", type=float, default=0.65, help="train.py --hw-decoder-load (default 0.65)")
    a("--py-workers", type=_list(int, 0, 256), help="DALI source processes of the loader rows (0,4,8)")
    a("--dali-threads", type=int, default=min(8, cores), help=f"DALI CPU threads (min(8, cores) = {min(8, cores)})")
    a("--torch-workers", type=int, default=cores, help=f"DataLoader workers, loader rows and train.py -j ({cores})")
    a("--runs", type=int, default=1, help="loader-only epochs per row, median reported (default 1)")
    a(
        "--warmup-batches",
        type=int,
        help="untimed loader-only batches per epoch (default 5; the torchvision row: at least --torch-workers x 2 + 1)",
    )
    a("--budget", type=float, help="seconds for the whole run, test tier included; rows that would not fit are not run")
    a("--tests-budget", type=float, help=f"seconds for the gpu test tier ({GPU_TESTS}, run first; 0: not run)")
    a("--row-budget", type=float, help="seconds for each loader-only row's process, killed after (default 120)")
    args = p.parse_args(argv)
    defaults: dict[str, Any] = dict(images=24576, batch=256, crop=224, steps=60, print_freq=20)
    defaults |= dict(archs=["resnet50", "resnet18"], row_budget=120.0)
    defaults |= dict(py_workers=[0, 4, 8], warmup_batches=5, tests_budget=150.0, budget=540.0)
    if args.quick:
        defaults |= dict(images=16384, steps=30, print_freq=10)
    if args.cpu:
        defaults |= dict(images=64, batch=8, crop=64, steps=4, print_freq=2, archs=["resnet18"], py_workers=[0, 1])
        defaults |= dict(warmup_batches=2, tests_budget=120.0, budget=600.0)
    for name, value in defaults.items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    counts = (args.images, args.steps, args.print_freq, args.batch, args.crop, args.runs, args.warmup_batches)
    if min(*counts, args.dali_threads, args.torch_workers) < 1 or not args.archs:
        p.error("counts must be positive and --archs not empty")
    if args.steps < 2 * args.print_freq:
        p.error("--steps must be at least 2 x --print-freq: the first print window is warm-up, left out")
    if args.images // args.batch <= args.warmup_batches:
        p.error(f"--images {args.images} gives {args.images // args.batch} batches: need more than --warmup-batches")
    if not 0 <= args.hw_decoder_load <= 1 or args.tests_budget < 0 or args.row_budget <= 0:
        p.error("--hw-decoder-load must be in [0, 1], --tests-budget >= 0 and --row-budget > 0")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: not a directory")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget
    info, missing = probe(args)
    print(machine.line(info), flush=True)
    for need, reason in missing.items():
        log(f"missing {need}: {reason}")
    with data.workdir(args.work, "gpu_check_") as work:
        d = Data(work)
        checks = plan(args, d)
        for i, check in enumerate(checks):
            if i == 1:  # after the test tier, which needs no data
                setup_data(args, missing, d)
                log(f"data: {d.description}")
                if d.shm:
                    log(f"warning: {d.shm}")
            run_check(check, missing, deadline, args.budget)
            set_ratios(checks[: i + 1])
            log(f"[{i + 1}/{len(checks)}] {check.row.what}: {check.row.result} ({check.seconds:.0f} s)")
            table = render(args, info, d, checks[: i + 1])
            table.save(args.out / "gpu_check.json")  # rewritten after each row
    table.report(None)
    if not args.cpu:
        command = " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)])
        png = results.publish(table, machine.kind(info), "gpu-check", command, time.monotonic() - started)
        log(f"rewrote the {machine.kind(info)} gpu-check section of {results.RESULTS} and {png}")
    log(f"wrote {args.out / 'gpu_check.json'}")
    print(summary(checks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
