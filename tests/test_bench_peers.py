"""The benchmark's peer comparison (bench.lib.peers, bench.lib.comparison, the chart): a peer whose
package is missing becomes a "not run" row and the bench goes on; peers that shuffle on their own must
still deliver one epoch's worth of distinct samples; FFCV's stored JPEG bytes come back out intact."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.lib import BenchError, comparison, results
from bench.lib.ours import plan_indices
from bench.lib.peers import PEERS, Peer, Samples
from bench.lib.table import Row, Table
from bench.lib.timing import Contender, run_rounds
from lmdb_dali_train.loaders.batch import Batch
from lmdb_io.reading.plan import RankPlan

LENGTH, BATCH = 40, 8


class FakeLoader:
    """Batches of the given indices, no images worth the name: what the timing loop reads."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.indices) - BATCH + 1, BATCH):
            idx = torch.tensor(self.indices[i : i + BATCH])
            yield Batch(torch.zeros(BATCH, 1), torch.zeros(BATCH), idx, torch.zeros(BATCH, dtype=torch.bool))


def plan_loader(seed: int) -> FakeLoader:
    return FakeLoader(RankPlan(LENGTH, BATCH, seed=seed).for_epoch(0).indices.tolist())


def rounds_of(*found: Contender, warmup_rounds: int = 0):  # type: ignore[no-untyped-def]
    return run_rounds(found, 1, BATCH, 1, plan_indices(LENGTH, BATCH), cores=1, warmup_rounds=warmup_rounds)


def test_missing_package_is_a_not_run_reason() -> None:
    peer = Peer("X", "how", ("no_such_package_for_bench_xyz",), PEERS["ffcv"].build, PEERS["ffcv"].loader)
    assert peer.missing() == "not run: no_such_package_for_bench_xyz not installed (pip install '.[bench]')"
    assert Peer("Y", "how", ("json",), PEERS["ffcv"].build, PEERS["ffcv"].loader).missing() is None


def test_a_blocked_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)  # how a test or a user hides an installed package
    assert PEERS["wds"].missing() == "not run: webdataset not installed (pip install '.[bench]')"


def test_a_peer_with_its_own_order_must_deliver_distinct_samples() -> None:
    own_order = Contender("peer", "peer", "", lambda seed: FakeLoader(list(range(LENGTH))[::-1]), follows_plan=False)
    assert rounds_of(Contender("ours", "ours", "", plan_loader), own_order).ran("peer")
    repeats = Contender("peer", "peer", "", lambda seed: FakeLoader([0] * LENGTH), follows_plan=False)
    with pytest.raises(BenchError, match="peer: round 0 delivered other samples"):
        rounds_of(repeats)
    reordered = Contender("ours", "ours", "", lambda seed: FakeLoader(list(range(LENGTH))))
    with pytest.raises(BenchError, match="ours: round 0 delivered other samples"):
        rounds_of(reordered)


def test_a_short_peer_is_accepted_only_within_its_allowance() -> None:
    short = FakeLoader(list(range(LENGTH - BATCH)))
    allowed = Contender("peer", "peer", "", lambda seed: short, follows_plan=False, max_short=1)
    assert rounds_of(allowed).ran("peer")
    with pytest.raises(BenchError):
        rounds_of(Contender("peer", "peer", "", lambda seed: short, follows_plan=False))


def test_warmup_rounds_are_kept_apart_and_give_the_cold_first_batch() -> None:
    built: list[int] = []

    def make(seed: int) -> FakeLoader:
        built.append(seed)
        return plan_loader(seed)

    rounds = rounds_of(Contender("ours", "ours", "", make), warmup_rounds=1)
    assert len(built) == 2 and len(rounds.warmups["ours"]) == 1 and len(rounds.timings["ours"]) == 1
    cold, warm = rounds.first_batch("ours")
    assert cold == rounds.warmups["ours"][0].first_batch and warm == rounds.timings["ours"][0].first_batch
    assert rounds.dtypes() == {"ours": {"torch.float32"}}


def test_skipped_peers_and_controls_become_not_run_rows() -> None:
    built = comparison.Built(skipped={k: f"not run: {k} missing" for k in ("ffcv_full", "ffcv_256", "litdata", "wds")})
    built.skipped |= {"lmdb_ffcv_full": "not run: ffcv_full missing", "lmdb_ffcv_256": "not run: ffcv_256 missing"}
    built.skipped |= {"lmdb_q90": "not run: convert.py has no --quality", "lmdb_max256": "not run: no --max-size"}
    found = comparison.contenders(built, BATCH, 16, 1, {"dali": ({}, 0, ""), "torch": ({}, 0, "")})
    assert all(c.skip for c in found)
    rounds = rounds_of(Contender("dali_lmdb_w0", "ours", "", plan_loader), *found)
    rows = comparison.rows(found, rounds, "dali_lmdb_w0", built)
    by_what = {r.what: r for r in rows}
    assert by_what[comparison.WHAT["lmdb_q90"]].result == "not run: convert.py has no --quality"
    targets = [r for r in rows if r.what.startswith("DALI CPU / FFCV")]
    assert len(targets) == 4 and all(r.result.startswith("not run") for r in targets)
    assert {r.met for r in targets} == {"not run", ""}
    assert "FFCV" not in comparison.first_batch_row(rounds, "dali_lmdb_w0").result


def test_chart_has_a_panel_per_kind_and_training_relative_to_synthetic(tmp_path: Path) -> None:
    rows = [
        Row("convert: ours, default checks", "", "100 img/s", 100.0),
        Row("convert: ours time / tar time", "", "1 s / 1 s"),
        Row("random read: baseline", "", "5 reads/s", 5.0),
        Row("DALI CPU train from the LMDB", "", "900", 900.0),
        Row(comparison.WHAT["litdata"], "", "not run: litdata not installed"),
        Row("train: resnet18, synthetic", "", "50", 50.0),
        Row("train: resnet18, torch", "", "40", 40.0),
        Row("training resnet50, synthetic", "", "200", 200.0),  # bench.gpu_check's names: per model
        Row("training resnet50, DALI loader", "", "150", 150.0),
    ]
    found = results.panels(Table("t", rows=rows))
    assert [len(bars) for _, _, bars in found] == [1, 2, 4]
    assert found[1][2][1][1] is None  # the peer that did not run: a labelled empty bar
    assert [v for _, v, _ in found[2][2]] == [1.0, 0.8, 1.0, 0.75]
    png = tmp_path / "chart.png"
    assert results.chart(Table("t", rows=rows), png) and png.read_bytes().startswith(b"\x89PNG")


def test_ffcv_stored_bytes_are_the_jpegs_it_decodes(tmp_path: Path) -> None:
    pytest.importorskip("ffcv", reason="ffcv is not installed (the bench extra)")
    from PIL import Image

    from bench.lib.peers import stored_jpegs
    from lmdb_io.demo_images import make_image_folder

    make_image_folder(str(tmp_path / "tree"), classes=2, per_class=3)
    samples = Samples.from_tree(tmp_path / "tree")
    beton = PEERS["ffcv"].build(samples, tmp_path / "x.beton", max_resolution=32, workers=1)
    got = sorted(stored_jpegs(beton))
    assert [(i, label) for i, label, _ in got] == list(enumerate(samples.labels))
    for _, _, jpeg in got:
        with Image.open(io.BytesIO(jpeg)) as im:
            assert im.format == "JPEG" and 30 <= max(im.size) <= 32  # FFCV truncates: 31 happens


@pytest.mark.parametrize("key", ["wds", "litdata"])
def test_peer_delivers_normalised_float32_chw(key: str, tmp_path: Path) -> None:
    """What the bench compares must be the same work: every peer ends in float32 CHW, normalised (a peer
    handing over uint8 would skip the conversion the others pay for)."""
    peer = PEERS[key]
    reason = peer.missing()
    if reason:
        pytest.skip(reason)
    from lmdb_io.demo_images import make_image_folder

    make_image_folder(str(tmp_path / "tree"), classes=2, per_class=8)
    built = peer.build(Samples.from_tree(tmp_path / "tree"), tmp_path / key)
    batches = [b for b in peer.loader(built, 4, 32, 1)(0)]
    assert batches
    for b in batches:
        assert b.images.dtype == torch.float32 and tuple(b.images.shape) == (4, 3, 32, 32)
        assert b.images.min() < 0  # normalised: ToTensor's 0..1 minus the mean goes negative


def test_batches_a_loader_holds_ready_stay_untimed() -> None:
    """A loader that finished ``held`` batches before the first was taken must not have them timed as free:
    the clock starts after ``held + 1`` batches (or the rounds' own warm-up, if larger)."""
    eager = Contender("eager", "eager", "", plan_loader, held=2)
    plain = Contender("plain", "plain", "", plan_loader)
    rounds = rounds_of(eager, plain)
    batches = LENGTH // BATCH
    assert rounds.timings["plain"][0].images == (batches - 1) * BATCH  # rounds_of's warm-up: 1 batch
    assert rounds.timings["eager"][0].images == (batches - 3) * BATCH
