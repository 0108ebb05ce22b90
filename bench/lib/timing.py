"""Timing: rounds that interleave contenders, each on a fresh loader, warm-up batches untimed, medians;
the CPU that this process tree and everybody else used meanwhile, and a process tree's peak RSS (psutil)."""

import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import BenchError, last_line
from .data import REPO

POLL_SECONDS = 0.02
Sync = Callable[[], None] | None
# A fresh wrapper whose only child is the measured command, so RUSAGE_CHILDREN's ru_maxrss is that command's.
RUSAGE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _tree(pid: int | None = None) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _sum(procs: list[psutil.Process], measure: Callable[[psutil.Process], float]) -> float:
    total = 0.0
    for proc in procs:
        try:
            total += measure(proc)
        except psutil.Error:
            pass
    return total


def _cpu(proc: psutil.Process) -> float:
    c = proc.cpu_times()
    return c.user + c.system + c.children_user + c.children_system


def cpu_snapshot() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process tree), both cumulative; the tree
    counts its reaped children too (children_user/system), so a worker that exits keeps counting."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal")), _sum(_tree(), _cpu)


def peak_rss(cmd: Sequence[str]) -> tuple[int, int]:
    """Run ``cmd`` under a fresh wrapper; returns (peak summed RSS of its process tree, polled every 20 ms;
    the wrapper's RUSAGE_CHILDREN ru_maxrss), in bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUSAGE_WRAPPER, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _sum(_tree(proc.pid)[1:], lambda p: p.memory_info().rss))
        time.sleep(POLL_SECONDS)
    out, err = proc.communicate()
    if proc.returncode:
        raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}): {last_line(err.decode())}")
    return int(peak), int(out.split()[-1]) * 1024


@dataclass
class EpochTiming:
    """One epoch after its warm-up batches; ``first_batch``: seconds from building the loader to its first batch."""

    batches: int
    images: int
    seconds: float
    own_cpu: float
    foreign_cpu: float
    indices: list[int]
    first_batch: float = 0.0
    dtype: str = ""  # of the first batch's images: contenders must deliver the same

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def foreign_share(self, cores: int) -> float:
        return max(self.foreign_cpu, 0.0) / (self.seconds * cores)

    def summary(self, cores: int) -> dict[str, float]:
        found = {"timed_images": self.images, "seconds": self.seconds, "images_per_s": self.rate}
        found |= {"cores_used": self.own_cpu / self.seconds, "others_cpu_share": self.foreign_share(cores)}
        return found | {"first_batch_s": self.first_batch}


def time_epoch(loader: Iterable[Any], batch_size: int, warmup: int, sync: Sync, built_at: float = 0.0) -> EpochTiming:
    """One epoch; the clock starts on receiving batch ``warmup`` (1-based) and stops on the last, each time
    after ``sync()`` where given. With a loader length only those two batches sync and snapshot the CPU.
    ``built_at`` (perf_counter before the loader was built) gives the time to its first batch."""
    if warmup < 1:
        raise ValueError("warmup must be at least 1 batch (the clock starts on receiving one)")

    def now() -> float:
        if sync is not None:
            sync()
        return time.perf_counter()

    first_at, total = built_at or time.perf_counter(), len(loader) if isinstance(loader, Sized) else None
    t = EpochTiming(batches=0, images=0, seconds=0.0, own_cpu=0.0, foreign_cpu=0.0, indices=[])
    start = last = None  # (perf_counter, cpu_snapshot()) at batch ``warmup`` and at the last batch timed
    for batch in loader:
        t.batches += 1
        if t.batches == 1:
            t.first_batch, t.dtype = now() - first_at, str(batch.images.dtype)
        if len(batch.labels) != batch_size:
            raise BenchError(f"batch {t.batches} holds {len(batch.labels)} samples, not {batch_size}")
        t.indices += batch.indices.tolist()
        t.images += batch_size if t.batches > warmup else 0
        if t.batches == warmup or t.batches == total or (total is None and t.batches > warmup):
            last = now(), cpu_snapshot()
            start = start or last
    if start is None or last is None or t.images == 0:
        raise BenchError(f"an epoch of {t.batches} batches leaves none to time after {warmup} warm-up batches")
    if total is not None and t.batches != total:
        raise BenchError(f"the loader announced {total} batches and delivered {t.batches}")
    t.seconds, t.own_cpu = last[0] - start[0], last[1][1] - start[1][1]
    t.foreign_cpu = last[1][0] - start[1][0] - t.own_cpu
    return t


def wait_for_quiet(cores: int, max_foreign: float, timeout: float, interval: float = 1.0) -> float:
    """Sleep until others take at most ``max_foreign`` of the CPUs over ``interval``, or ``timeout`` passes;
    returns their share over the last interval."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_snapshot()
        time.sleep(interval)
        after = cpu_snapshot()
        share = max((after[0] - before[0]) - (after[1] - before[1]), 0.0) / (interval * cores)
        if share <= max_foreign or time.monotonic() >= deadline:
            return share


DATALOADER_PREFETCH = 2  # torch DataLoader's prefetch_factor default, which lmdb_dali_train.loaders.torch_loader keeps


def untimed_batches(held: int, base: int) -> int:
    """Batches to leave untimed at an epoch's start: at least ``base``, and more than the ``held`` batches a
    loader may have finished before the first is taken (work done before the clock started)."""
    return max(base, held + 1)


@dataclass
class Contender:
    """One loader configuration: ``make(seed)`` builds a fresh loader that delivers the epoch plan's indices
    (or, not ``follows_plan``, as many distinct samples); ``skip``: why it is not run; ``held``: batches it may
    finish before the first is taken (they stay untimed)."""

    key: str
    what: str
    how: str
    make: Callable[[int], Iterable[Any]]
    follows_plan: bool = True
    skip: str = ""
    max_short: int = 0  # batches fewer than the plan it may deliver (a DataLoader drops one partial per worker)
    held: int = 0


@dataclass
class Rounds:
    """Every round run (``timings[key][round]``), which rounds count, and the rule that chose them."""

    timings: dict[str, list[EpochTiming]]
    used: list[int]
    disturbed: list[int]
    max_foreign: float
    cores: int
    warmups: dict[str, list[EpochTiming]] = field(default_factory=dict)  # untimed warm-up rounds

    def ran(self, key: str) -> bool:
        return bool(self.timings.get(key))

    def dtypes(self) -> dict[str, set[str]]:
        return {k: {t.dtype for t in ts} for k, ts in self.timings.items()}

    def first_batch(self, key: str) -> tuple[float, float]:
        """Seconds from building a loader to its first batch: (the first loader of its kind in this process,
        from the first warm-up round or else the first round; the median of the counted rounds)."""
        cold = (self.warmups.get(key) or self.timings[key])[0].first_batch
        return cold, statistics.median(self.timings[key][r].first_batch for r in self.used)

    def rates(self, key: str) -> list[float]:
        return [self.timings[key][r].rate for r in self.used]

    def median_rate(self, key: str) -> float:
        return statistics.median(self.rates(key))

    def median_ratio(self, num: str, den: str) -> float:
        """Median over the counted rounds of the per-round rate ratio (both ran minutes apart at most)."""
        return statistics.median(self.timings[num][r].rate / self.timings[den][r].rate for r in self.used)

    def spread(self, key: str) -> str:
        rates = self.rates(key)
        median = statistics.median(rates)
        return f"{median:,.0f}" if len(rates) == 1 else f"{median:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"

    def interference(self) -> str:
        """How much of the CPUs other processes took during the counted epochs, and the disturbed rounds."""
        share = [t.foreign_share(self.cores) for ts in self.timings.values() for t in ts]
        used = [self.timings[k][r].foreign_share(self.cores) for k in self.timings for r in self.used]
        note = f"Others took {statistics.median(used):.0%} of the CPUs (median; max {max(used):.0%}) while timed"
        if self.disturbed:
            unreliable = set(self.disturbed) & set(self.used)
            note += f"; {len(self.disturbed)} disturbed round(s) (> {self.max_foreign:.0%}, up to {max(share):.0%}) "
            note += "COUNTED: too few quiet rounds, unreliable" if unreliable else "left out"
        return note + "."

    def raw(self) -> dict[str, Any]:
        return {
            "rounds_used": self.used,
            "rounds_disturbed": self.disturbed,
            "runs": {k: [t.summary(self.cores) for t in ts] for k, ts in self.timings.items()},
            "warmup_runs": {k: [t.summary(self.cores) for t in ts] for k, ts in self.warmups.items()},
        }


def run_rounds(
    contenders: Sequence[Contender],
    runs: int,
    batch_size: int,
    warmup: int,
    expected: Callable[[int], list[int]],
    *,
    cores: int,
    max_foreign: float = 1.0,
    extra_runs: int = 0,
    quiet_wait: float = 0.0,
    sync: Sync = None,
    log: Callable[[str], None] = lambda s: None,
    warmup_rounds: int = 0,
) -> Rounds:
    """Rounds of one timed epoch per contender, each on a fresh loader (seed = round), after ``warmup_rounds``
    untimed ones. A round where others took more than ``max_foreign`` of the CPUs is disturbed; up to
    ``extra_runs`` more replace disturbed ones. Every epoch must deliver ``expected(seed)`` (see ``Contender``)."""
    active = [c for c in contenders if not c.skip]
    found = Rounds({c.key: [] for c in active}, [], [], max_foreign, cores, {c.key: [] for c in active})

    def one(c: Contender, seed: int) -> EpochTiming:
        built_at = time.perf_counter()
        loader = c.make(seed)
        timing = time_epoch(loader, batch_size, untimed_batches(c.held, warmup), sync, built_at)
        del loader
        gc.collect()
        want, got = expected(seed), timing.indices
        if c.follows_plan:
            same = got == want
        else:
            same = len(set(got)) == len(got) and len(want) - c.max_short * batch_size <= len(got) <= len(want)
        if not same:
            raise BenchError(f"{c.key}: round {seed} delivered other samples than the epoch plan")
        return timing

    for w in range(warmup_rounds):
        for c in active:
            found.warmups[c.key].append(one(c, runs + extra_runs + w))
            log(f"warm-up {w + 1} {c.key}: first batch after {found.warmups[c.key][-1].first_batch:.2f} s")
    for run in range(runs + extra_runs):
        if len(found.used) == runs:  # the clean rounds, until the end
            break
        if quiet_wait > 0:
            log(f"round {run + 1}: others take {wait_for_quiet(cores, max_foreign, quiet_wait):.0%} of the CPUs")
        for c in active:
            timing = one(c, run)
            found.timings[c.key].append(timing)
            log(f"round {run + 1} {c.key}: {timing.rate:,.1f} img/s, others {timing.foreign_share(cores):.0%}")
        worst = max((found.timings[c.key][-1].foreign_share(cores) for c in active), default=0.0)
        (found.used if worst <= max_foreign else found.disturbed).append(run)
    if len(found.used) < runs:
        found.used = sorted(found.used + found.disturbed)
    return found
