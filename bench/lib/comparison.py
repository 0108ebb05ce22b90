"""The peer comparison of ``bench.loaders``: FFCV, LitData and WebDataset on the same images, control LMDBs
of what FFCV stores or ``convert.py --quality 90`` / ``--max-size 256`` store, their contenders and the ratio
rows; what cannot be built (a package or convert.py flag missing) is a "not run: ..." row."""

import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from . import data, ours
from .peers import FFCV_BATCHES_AHEAD, FFCV_QUALITY as QUALITY, PEERS, Samples, jpeg_bytes, stored_jpegs
from .table import Row, yes_no
from .timing import DATALOADER_PREFETCH, Contender, Rounds

FFCV_CAP = 256  # FFCV's ImageNet recipe's max_resolution for speed; convert.py --max-size the same
# convert.py's settings that store what FFCV stores: q90 re-encodes; the cap at q90 too (its default is 95)
CONVERT_FLAGS = {
    "lmdb_q90": ("--quality", str(QUALITY)),
    "lmdb_max256": ("--max-size", str(FFCV_CAP), "--quality", str(QUALITY)),
}


@cache
def convert_has(flag: str) -> bool:
    """Whether this checkout's convert.py takes ``flag`` (older ones lack --quality and --max-size)."""
    out = subprocess.run([sys.executable, "convert.py", "--help"], capture_output=True, text=True, cwd=data.REPO)
    return flag in out.stdout


@dataclass
class Built:
    """What the comparison built: peer datasets and control databases by key, or why not (``skipped``)."""

    paths: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)

    def get(
        self, key: str, build: Callable[[], Path], reason: str = "", size: Callable[[Path], int] | None = None
    ) -> None:
        """Build ``key`` unless ``reason`` says why it cannot be; note its size (``size(path)``, else its files')."""
        if reason:
            self.skipped[key] = reason
            return
        path = build()
        self.paths[key] = path
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        self.nbytes[key] = size(path) if size else sum(f.stat().st_size for f in files)
        data.warm(path)


def ffcv_tree(beton: Path, classes: list[str], root: Path) -> Path:
    """FFCV's stored JPEG bytes as an ImageFolder tree, which convert.py stores as they are."""
    data.remove(root)
    for index, label, jpeg in stored_jpegs(beton):
        path = root / classes[label] / f"{index:08d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg)
    return root


def _ffcv_control(beton: Path, classes: list[str], work: Path, name: str) -> Path:
    root = ffcv_tree(beton, classes, work / f"{name}-tree")
    out = data.convert(root, work / f"{name}.lmdb")
    data.remove(root)
    return out


def build_all(samples: Samples, tree: Path, work: Path, peers: Iterable[str]) -> Built:
    """Every peer dataset in ``peers`` and every control database, under ``work``."""
    built = Built()
    wanted = set(peers)
    for key, peer in PEERS.items():
        why = "not run: left out (--peers)" if key not in wanted else peer.missing() or ""
        if key != "ffcv":
            built.get(key, partial(peer.build, samples, work / key), why)
            continue
        for name, cap in (("ffcv_full", None), ("ffcv_256", FFCV_CAP)):
            beton = work / f"{name}.beton"
            built.get(name, partial(peer.build, samples, beton, max_resolution=cap), why, size=jpeg_bytes)
            control = partial(_ffcv_control, beton, samples.classes, work, name)
            built.get(f"lmdb_{name}", control, built.skipped.get(name, ""))
    for name, flags in CONVERT_FLAGS.items():
        absent = [f for f in flags if f.startswith("--") and not convert_has(f)]
        why = f"not run: convert.py has no {', '.join(absent)}" if absent else ""
        built.get(name, partial(data.convert, tree, work / f"{name}.lmdb", *flags), why)
    return built


WHAT: dict[str, str] = {
    "ffcv_full": f"FFCV, `.beton` at full resolution (JPEG q{QUALITY} re-encode)",
    "ffcv_256": f"FFCV, `.beton` with `max_resolution={FFCV_CAP}` (its ImageNet recipe's speed setting, q{QUALITY})",
    "litdata": PEERS["litdata"].what,
    "wds": PEERS["wds"].what,
    "lmdb_ffcv_full": "DALI CPU from an LMDB of FFCV's stored bytes, full resolution (control)",
    "lmdb_ffcv_256": f"DALI CPU from an LMDB of FFCV's stored bytes, `max_resolution={FFCV_CAP}` (control)",
    "lmdb_q90": f"DALI CPU from `convert.py {' '.join(CONVERT_FLAGS['lmdb_q90'])}` on the originals",
    "lmdb_max256": f"DALI CPU from `convert.py {' '.join(CONVERT_FLAGS['lmdb_max256'])}` on the originals",
    "torch_ffcv_full": "torchvision DataLoader from the LMDB of FFCV's full-resolution bytes (control)",
}


Mine = dict[str, tuple[dict[str, Any], int, str]]  # kind -> (ours.loader options, batches held ahead, how)


def contenders(built: Built, batch: int, crop: int, workers: int, mine: Mine) -> list[Contender]:
    """Peer and control contenders, each FFCV row next to its controls; ``mine``: ours on the controls."""

    def never(seed: int) -> Iterable[Any]:
        raise AssertionError("a skipped contender is never built")

    found = []
    order = ["ffcv_full", "lmdb_ffcv_full", "lmdb_q90", "ffcv_256", "lmdb_ffcv_256", "lmdb_max256"]
    for key in [*order, "litdata", "wds", "torch_ffcv_full"]:
        source = "lmdb_ffcv_full" if key == "torch_ffcv_full" else key
        path, skip = built.paths.get(source), built.skipped.get(source, "")
        peer = "ffcv" if key.startswith("ffcv") else key if key in PEERS else ""
        kind = "torch" if key.startswith("torch") else "dali"
        options, held, how = mine[kind]
        c = Contender(key, WHAT[key], how, never, follows_plan=not peer, skip=skip, held=held)
        if peer:
            c.held = FFCV_BATCHES_AHEAD if peer == "ffcv" else workers * DATALOADER_PREFETCH
            c.how = PEERS[peer].how + f"; RGBImageField(write_mode='jpg', jpeg_quality={QUALITY})" * (peer == "ffcv")
            c.max_short = workers if key == "wds" else 0  # an IterableDataset: each worker drops its partial batch
        if path is not None and peer:
            c.make = PEERS[peer].loader(path, batch, crop, workers)
        elif path is not None:
            c.make = ours.loader(kind, path, batch, crop, **options)
        found.append(c)
    return found


def rate_row(rounds: Rounds, c: Contender, ratio: str, how: str = "", **fields: str) -> Row:
    """``c``'s row: images/s (median, min-max), ``ratio``, seconds to the first batch (cold / warm)."""
    cold, warm = rounds.first_batch(c.key)
    result, rate = rounds.spread(c.key), rounds.median_rate(c.key)
    return Row(c.what, how or c.how, result, rate, ratio=ratio, first_batch=f"{cold:.2f} / {warm:.2f}", **fields)


def ratio_row(rounds: Rounds, what: str, num: str, den: str, goal: float | None, why: str = "") -> Row:
    """The per-round ratio of contender ``num``'s rate to ``den``'s, met where at least ``goal``; where either
    did not run, ``why``."""
    target, met = f">= {goal:.1f}x" if goal else "(info)", "not run" * bool(goal)
    if not (rounds.ran(num) and rounds.ran(den)):
        return Row(what, "per-round ratio of the two rows above", why or "not run", target=target, met=met)
    ratio, result = rounds.median_ratio(num, den), f"{rounds.median_rate(num):,.0f} / {rounds.median_rate(den):,.0f}"
    how, met = f"`{num}` / `{den}`, same cores, per-round ratio", yes_no(ratio >= goal) if goal else ""
    return Row(what, how, result, ratio=f"{ratio:.2f}x", target=target, met=met)


def cost_row(rounds: Rounds, what: str, cheaper: str, how: str, limit: float, ours: str = "dali_lmdb_w0") -> Row:
    """What ``ours`` costs per image over contender ``cheaper`` (the per-round ratio of their rates, - 1),
    met where at most ``limit``."""
    cost = rounds.median_ratio(cheaper, ours) - 1
    result = f"{rounds.median_rate(ours):,.0f} vs {rounds.median_rate(cheaper):,.0f}"
    return Row(
        what, how, result, ratio=f"{cost * 100:+.1f} %", target=f"<= {limit * 100:.0f} %", met=yes_no(cost <= limit)
    )


def rows(found: list[Contender], rounds: Rounds, ours: str, built: Built) -> list[Row]:
    """A row per peer and control (rate, vs ``ours``, the data size), then the target ratios."""
    out = []
    for c in found:
        if c.skip:
            out.append(Row(c.what, c.how, c.skip, target="(info)"))
        else:
            size = built.nbytes.get(c.key if c.key != "torch_ffcv_full" else "lmdb_ffcv_full", 0)
            how = f"{c.how}; {size / data.MB:,.1f} MB stored" if size else c.how
            out.append(rate_row(rounds, c, f"{rounds.median_ratio(c.key, ours):.2f}x vs DALI CPU (`{ours}`)", how))
    targets = [
        ("lmdb_ffcv_full", "ffcv_full", 1.1, "FFCV's exact q90 bytes"),
        ("lmdb_q90", "ffcv_full", 1.1, f"`convert.py {' '.join(CONVERT_FLAGS['lmdb_q90'])}`"),
        ("lmdb_max256", "ffcv_256", 1.0, f"`convert.py {' '.join(CONVERT_FLAGS['lmdb_max256'])}`"),
        ("lmdb_ffcv_256", "ffcv_256", None, f"FFCV's exact max_resolution={FFCV_CAP} bytes"),
    ]
    for num, den, goal, held in targets:
        what = f"DALI CPU / FFCV: {held} vs FFCV {'full resolution' if den == 'ffcv_full' else f'{FFCV_CAP} cap'}"
        out.append(ratio_row(rounds, what, num, den, goal, built.skipped.get(num) or built.skipped.get(den, "")))
    return out


def first_batch_row(rounds: Rounds, ours: str) -> Row:
    """Time from building a loader to its first batch: ours (first in the process) against FFCV's JIT."""
    cold, warm = rounds.first_batch(ours)
    result = f"{cold:.2f} s cold, {warm:.2f} s warm"
    ratio = ""
    if rounds.ran("ffcv_full"):
        ffcv_cold, ffcv_warm = rounds.first_batch("ffcv_full")
        result += f"; FFCV {ffcv_cold:.1f} s cold (JIT), {ffcv_warm:.1f} s warm"
        ratio = f"{ffcv_cold / cold:.0f}x sooner than FFCV"
    how = f"`{ours}`: seconds from the call that builds the loader to its first batch; cold: the first in this process"
    return Row("time to first batch", how, result, ratio=ratio, target="< 1 s", met=yes_no(cold < 1.0))
