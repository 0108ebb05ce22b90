"""Both loaders over the generated databases, on DALI's CPU operators: what they deliver, to which rank.

The databases come from ``tests/datagen.py`` (conftest's ``train_db`` and ``val_db``); sizes are read from
them, never assumed. Batch sizes leave remainders on 1-3 ranks and make validation wrap around, so the
padding paths run. DALI tests are skipped (one line why) where DALI is not installed; torch ones still run.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import convert, copy_tree, lmdb_io_cli, needs_dali, read_spec

from lmdb_dali_train.exit_codes import ExitCode
from lmdb_dali_train.loaders.torch_loader import make_torch_loader
from lmdb_io import open_database
from lmdb_io.reading.constants import IMAGENET_MEAN, IMAGENET_STD
from lmdb_io.reading.plan import RankPlan
from lmdb_io.reading.spec import ReadSpec

KINDS = [pytest.param("dali", marks=needs_dali), "torch"]
PARITY_BAD_IMAGES = ("hopper_orientation_6.jpg", "hopper_gray.jpg", "pil_sample_cmyk.jpg")  # EXIF 6, gray, CMYK
MAX_MEAN_ABS_DIFF = 3.0  # per image, on the 0..255 scale: decoder and resampler rounding only
# train: the same crop, but DALI decodes only the window (libjpeg-turbo's DCT-domain crop, whose chroma is
# upsampled as at an image edge along the window's sides) while Pillow decodes the whole frame: a small
# window blown up to the crop size can differ by more at its edges, so the share within MAX_MEAN_ABS_DIFF
TRAIN_WITHIN_SHARE = 0.95


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Per-image tensors are tiny: with two torch threads beside DALI's, OpenMP's spinning costs more than
    it gains (up to 10x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread_here() -> Iterator[None]:
    with one_torch_thread():
        yield


def make_loader(kind: str, path: Path, batch: int, **kw):
    spec, options = read_spec(path, batch, **kw)
    if kind == "torch":
        options.setdefault("workers", 0)
        return make_torch_loader(spec, **options)
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    return make_dali_loader(spec, **options)


def _epoch_indices(loader) -> tuple[int, list[int], list[bool]]:
    batches, indices, padding = 0, [], []
    for batch in loader:
        assert bool(torch.isfinite(batch.images).all())
        batches += 1
        indices += batch.indices.tolist()
        padding += batch.padding.tolist()
    return batches, indices, padding


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Normalised NCHW images back on the 0..255 scale (float32)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() * std + mean) * 255


def worst_val_difference(db: Path, batch: int = 16, **kw) -> tuple[float, str, int]:
    """Validation through the DALI CPU loader and the torchvision one: (worst per-image mean absolute pixel
    difference, the key of that image, how many real samples were compared)."""
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    database = open_database(db)
    spec = ReadSpec(path=db, batch_size=batch, train=False, **kw)
    dali = make_dali_loader(spec)
    reference = make_torch_loader(spec, workers=0)
    worst, worst_key, count = 0.0, "", 0
    with one_torch_thread():
        for a, b in zip(dali, reference, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.padding, b.padding)
            real = ~a.padding
            diff = (to_pixels(a.images) - to_pixels(b.images)).abs().mean(dim=(1, 2, 3))
            for index, d in zip(a.indices[real].tolist(), diff[real].tolist(), strict=True):
                if d > worst:
                    worst, worst_key = d, database.key(index).decode()
            count += int(real.sum())
    return worst, worst_key, count


def train_differences(
    db: Path, batch: int = 16, epochs: int = 1, device: str | torch.device = "cpu", **kw
) -> dict[tuple[int, int], float]:
    """Training through the DALI loader (on ``device``) and the torchvision one, same seed: per-image mean
    absolute pixel difference (0..255) by (epoch, dataset index), the real samples of ``epochs`` epochs."""
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    spec = ReadSpec(path=db, batch_size=batch, train=True, **kw)
    dali, reference = make_dali_loader(spec, device=device), make_torch_loader(spec, workers=0)
    found: dict[tuple[int, int], float] = {}
    with one_torch_thread():
        for epoch in range(epochs):
            for a, b in zip(dali, reference, strict=True):
                assert torch.equal(a.indices, b.indices) and torch.equal(a.labels.cpu(), b.labels)
                diff = (to_pixels(a.images.cpu()) - to_pixels(b.images)).abs().mean(dim=(1, 2, 3))
                real = ~a.padding
                found |= {(epoch, i): d for i, d in zip(a.indices[real].tolist(), diff[real].tolist(), strict=True)}
    return found


def assert_train_parity(found: dict[tuple[int, int], float]) -> None:
    within = sum(d <= MAX_MEAN_ABS_DIFF for d in found.values()) / len(found)
    worst = sorted(found.values())[-5:]
    assert within >= TRAIN_WITHIN_SHARE, f"{within:.1%} within {MAX_MEAN_ABS_DIFF}/255; worst {worst}"


def parity_tree(images: Path, bad_images: Path, target: Path) -> Path:
    """A copy of the ImageFolder tree ``images`` with the EXIF-rotated, grayscale and CMYK bad-images
    files added to its first class."""
    tree = copy_tree(images, target)
    first = sorted(p for p in tree.iterdir() if p.is_dir())[0]
    for name in PARITY_BAD_IMAGES:
        shutil.copyfile(bad_images / name, first / f"bad-images {name}")
    return tree


# -- the Batch contract ------------------------------------------------------------------------------


@needs_dali
@pytest.mark.parametrize("channels_last, fp16", [(False, False), (True, True)])
def test_dali_batch_contract(train_db: Path, val_db: Path, channels_last: bool, fp16: bool) -> None:
    """NCHW-shaped images (channels-last memory when asked), the dtype asked for, labels from the database,
    values normalised with the ImageNet constants: the same pixels as the torch loader on validation."""
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    dtype = torch.float16 if fp16 else torch.float32
    tolerance = 0.5 if fp16 else 1e-3  # float16 spacing near |x| = 2.6 is 2**-9, x std x 255 = 0.13 px
    for db, train in ((train_db, True), (val_db, False)):
        database = open_database(db)
        spec = ReadSpec(path=db, batch_size=8, train=train, crop=32, val_resize=40)
        loader = make_dali_loader(spec, channels_last=channels_last, dtype=dtype)
        batch = next(iter(loader))
        assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == dtype
        if channels_last:
            assert batch.images.is_contiguous(memory_format=torch.channels_last)
            assert not batch.images.is_contiguous()
        else:
            assert batch.images.is_contiguous()
        assert batch.labels.dtype == torch.int64 and batch.labels.shape == (8,)
        assert batch.labels.tolist() == [int(database.targets[i]) for i in batch.indices.tolist()]
        pixels = to_pixels(batch.images)
        assert -tolerance <= float(pixels.min()) and float(pixels.max()) <= 255 + tolerance
        assert float(pixels.std()) > 10  # photo content, not a constant or a collapsed range
    # validation is deterministic: per-channel statistics equal the torch loader's on the same images
    reference = next(
        iter(make_torch_loader(ReadSpec(path=val_db, batch_size=8, train=False, crop=32, val_resize=40), workers=0))
    )
    assert torch.equal(batch.indices, reference.indices)
    ours, theirs = pixels.transpose(0, 1).reshape(3, -1), to_pixels(reference.images).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(ours.mean(dim=1), theirs.mean(dim=1), rtol=0, atol=0.25)  # measured: < 0.01
    torch.testing.assert_close(ours.std(dim=1), theirs.std(dim=1), rtol=0, atol=0.25)


@pytest.mark.parametrize("channels_last, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_torch_batch_contract(val_db: Path, channels_last: bool, dtype: torch.dtype) -> None:
    """The workers ship uint8 crops; the loader hands NCHW-shaped images in the dtype and memory format
    asked for, normalised with the ImageNet constants: ToTensor then Normalize of those very pixels."""
    from torchvision.transforms import Normalize

    spec = ReadSpec(path=val_db, batch_size=8, train=False, crop=32, val_resize=40)
    loader = make_torch_loader(spec, channels_last=channels_last, dtype=dtype)
    batch = next(iter(loader))
    assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == dtype
    assert batch.images.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    shipped = [loader.items[(0, p)][0] for p in range(len(batch.indices))]
    assert all(image.dtype == torch.uint8 and image.shape == (3, 32, 32) for image in shipped)
    expected = Normalize(IMAGENET_MEAN, IMAGENET_STD)(torch.stack(shipped).float() / 255)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5  # bfloat16 keeps 8 significant bits: |x| < 2.7
    torch.testing.assert_close(batch.images.float(), expected, rtol=0, atol=tolerance)


def test_device_normalizer_takes_uint8_batches_only() -> None:
    from lmdb_dali_train.loaders.normalize import DeviceNormalizer

    normalize = DeviceNormalizer(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))
    with pytest.raises(ValueError, match="uint8 NCHW"):
        normalize(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        DeviceNormalizer(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), dtype=torch.uint8)


def test_torch_workers_persist_across_epochs_and_ignore_group_signals(train_db: Path) -> None:
    """The workers the first epoch starts serve every later one (no re-fork per epoch), drop a SIGINT or
    SIGTERM sent to them as to the process group, and exit when the loader is closed."""
    before = set(multiprocessing.active_children())
    loader = make_torch_loader(ReadSpec(path=train_db, batch_size=8, train=True, crop=32, seed=1), workers=2)
    first = _epoch_indices(loader)[1]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    for worker, name in itertools.product(workers, ("INT", "TERM")):  # from another process, as torchrun sends
        subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
    second = _epoch_indices(loader)[1]
    assert set(multiprocessing.active_children()) - before == workers and all(w.is_alive() for w in workers)
    n = len(open_database(train_db))
    assert [first, second] == [RankPlan(n, 8, seed=1).for_epoch(e).indices.tolist() for e in (0, 1)]
    loader.close()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert _epoch_indices(loader)[1] == RankPlan(n, 8, seed=1).for_epoch(2).indices.tolist()  # new workers
    loader.close()


def test_a_torch_loader_dropped_mid_epoch_ends_its_persistent_workers(train_db: Path) -> None:
    """Without close() and without the garbage collector: the last reference to the loader going away
    ends its workers (no loader <-> epoch cycle keeps them waiting for a collection)."""
    before = set(multiprocessing.active_children())
    loader = make_torch_loader(ReadSpec(path=train_db, batch_size=8, train=True, crop=32), workers=2)
    next(iter(loader))
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    gc.disable()
    try:
        del loader
        for worker in workers:
            worker.join(20)
    finally:
        gc.enable()
    assert [w.exitcode for w in workers] == [0, 0]


@pytest.mark.gpu
def test_torch_loader_normalises_on_the_gpu_as_on_the_cpu(val_db: Path) -> None:
    """On CUDA: uint8 batches through pinned memory (persistent workers), normalised on the GPU into
    bfloat16 channels-last; the same values as the CPU loader's float32, to bfloat16's rounding."""
    device = torch.device("cuda", 0)
    spec = ReadSpec(path=val_db, batch_size=8, train=False, crop=32, val_resize=40)
    gpu = make_torch_loader(spec, workers=2, device=device, dtype=torch.bfloat16, channels_last=True)
    try:
        for a, b in zip(gpu, make_torch_loader(spec, workers=0), strict=True):
            assert a.images.device == device and a.images.dtype == torch.bfloat16
            assert a.images.is_contiguous(memory_format=torch.channels_last)
            assert a.labels.device == device and torch.equal(a.indices, b.indices)
            torch.testing.assert_close(a.images.float().cpu(), b.images, rtol=0, atol=2e-2)
    finally:
        gpu.close()


# -- sharding and epochs -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_equal_shards(train_db: Path, val_db: Path, kind: str, world_size: int) -> None:
    # batch 8: training drops a remainder on every world size (and wraps around on 3 ranks when the size
    # is not a multiple of 3); validation pads its last batch on every world size
    db, batch = open_database(train_db), 8
    keys = {}
    for rank in range(world_size):
        loader = make_loader(kind, train_db, batch, train=True, rank=rank, world_size=world_size, seed=5, crop=32)
        batches, indices, _ = _epoch_indices(loader)
        assert (
            batches == len(loader) == RankPlan(len(db), batch, world_size=world_size, drop_last=True).num_batches(0) > 0
        )
        assert (
            indices
            == RankPlan(len(db), batch, rank=rank, world_size=world_size, seed=5, shuffle=True, drop_last=True)
            .for_epoch(0)
            .indices.tolist()
        )
        keys[rank] = [db.key(i) for i in indices]
    delivered = [k for rank_keys in keys.values() for k in rank_keys]
    assert len(delivered) == len(set(delivered))  # disjoint: no sample twice in an epoch
    # validation: padded to whole batches, every sample counted exactly once across ranks
    val_length = len(open_database(val_db))
    assert val_length % (world_size * batch), "validation must end in a padded batch here"
    counted, batch_counts = [], set()
    for rank in range(world_size):
        loader = make_loader(kind, val_db, batch, train=False, rank=rank, world_size=world_size, crop=32, val_resize=40)
        batches, indices, padding = _epoch_indices(loader)
        assert batches == len(loader)
        batch_counts.add(batches)
        counted += [i for i, pad in zip(indices, padding, strict=True) if not pad]
    assert batch_counts == {RankPlan(val_length, batch, world_size=world_size, drop_last=False).num_batches(0)}
    assert sorted(counted) == list(range(val_length))


@pytest.mark.parametrize("kind", KINDS)
def test_epochs_differ_and_repeat_by_seed(val_db: Path, kind: str) -> None:
    loader = make_loader(kind, val_db, 8, train=True, seed=3, crop=32)
    first, second = _epoch_indices(loader)[1], _epoch_indices(loader)[1]
    assert first != second
    again = make_loader(kind, val_db, 8, train=True, seed=3, crop=32)
    assert _epoch_indices(again)[1] == first
    other = make_loader(kind, val_db, 8, train=True, seed=4, crop=32)
    assert _epoch_indices(other)[1] != first


@needs_dali
def test_dali_parallel_source_with_two_workers(train_db: Path) -> None:
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    n = len(open_database(train_db))
    spec = ReadSpec(path=train_db, batch_size=16, train=True, seed=2, crop=32)
    serial = make_dali_loader(spec, py_workers=0)
    parallel = make_dali_loader(spec, py_workers=2)
    assert _epoch_indices(parallel)[1] == _epoch_indices(serial)[1]  # epoch 0
    assert (
        _epoch_indices(parallel)[1]
        == RankPlan(n, 16, rank=0, world_size=1, seed=2, shuffle=True, drop_last=True).for_epoch(1).indices.tolist()
    )  # epoch 1


@needs_dali
def test_two_pipelines_on_one_database(train_db: Path) -> None:
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    train = make_dali_loader(ReadSpec(path=train_db, batch_size=8, train=True, crop=32))
    val = make_dali_loader(ReadSpec(path=train_db, batch_size=8, train=False, crop=32, val_resize=40))
    t, v = iter(train), iter(val)
    for _ in range(3):
        assert next(t).images.shape == next(v).images.shape == (8, 3, 32, 32)


# -- the torch loader's augmentation ------------------------------------------------------------------


def test_torch_loader_augmentation_leaves_the_global_rng_alone(train_db: Path) -> None:
    """Augmentation is a function of (seed, epoch, index) (``lmdb_io.reading.augment``): it never touches
    the caller's RNG (workers=0 runs ``__getitem__`` in this process) and gives the same crops whatever the
    global RNG or worker count."""
    torch.manual_seed(1234)
    expected = torch.rand(8)
    torch.manual_seed(1234)
    spec = ReadSpec(path=train_db, batch_size=8, train=True, crop=32, seed=3)
    first = next(iter(make_torch_loader(spec, workers=0)))
    assert torch.equal(torch.rand(8), expected), "iterating the torch loader changed the global torch RNG"

    torch.manual_seed(999)  # another global state: the same crops and flips
    again = next(iter(make_torch_loader(spec, workers=0)))
    assert torch.equal(again.indices, first.indices) and torch.equal(again.images, first.images)
    in_workers = next(iter(make_torch_loader(spec, workers=2)))
    assert torch.equal(in_workers.images, first.images)
    other_seed = next(iter(make_torch_loader(replace(spec, seed=4), workers=0)))
    assert not torch.equal(other_seed.images, first.images)


# -- parity and odd files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_db(val_dir: Path, bad_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated validation tree plus the EXIF-rotated, grayscale and CMYK bad-images, in one database."""
    root = tmp_path_factory.mktemp("parity")
    out = root / "parity.lmdb"
    convert(parity_tree(val_dir, bad_images, root / "val"), out)
    return out


@needs_dali
def test_val_parity_between_dali_cpu_and_torchvision(parity_db: Path, generated) -> None:
    """Validation at the production geometry (resize 256, crop 224): the DALI CPU loader delivers what the
    torchvision loader does, within decoder and resampler rounding, for every image (1x1 to 4100 px
    strips, progressive, 4:2:2 with odd sizes, restart markers, gray, CMYK, EXIF-rotated)."""
    worst, key, count = worst_val_difference(parity_db)
    assert count == len(open_database(parity_db)) == len(generated.val.stored) + len(PARITY_BAD_IMAGES)
    assert worst <= MAX_MEAN_ABS_DIFF, f"worst per-image mean abs difference {worst:.2f} / 255 (record {key})"


@needs_dali
def test_train_parity_between_dali_cpu_and_torchvision(train_db: Path) -> None:
    """Training at the production crop (224): both loaders crop each sample where ``train_view`` says and
    flip it alike, so the images agree within decoder and resampler rounding for 95% of the samples (the
    rest: JPEG decoder differences at the edges of small windows, see ``TRAIN_WITHIN_SHARE``)."""
    found = train_differences(train_db, seed=5, epochs=2)
    assert len(found) >= 2 * (len(open_database(train_db)) // 16) * 16 - 16
    assert_train_parity(found)


@pytest.fixture(scope="module")
def bad_db(bad_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    listing = root / "files.csv"
    listing.write_text("".join(f"{p.name},odd\n" for p in sorted(bad_images.glob("*.jpg"))))
    out = root / "bad.lmdb"
    convert(bad_images, out, "--file-list", str(listing))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_bad_images_database_decodes_in_both_loaders(bad_db: Path, kind: str) -> None:
    n = len(open_database(bad_db))
    assert n >= 4
    batches, _, padding = _epoch_indices(make_loader(kind, bad_db, 4, train=False, crop=32, val_resize=40))
    assert len(padding) - sum(padding) == n and batches == -(-n // 4)
    assert _epoch_indices(make_loader(kind, bad_db, 4, train=True, crop=32))[0] == n // 4


@needs_dali
def test_decode_check_names_a_record_the_decoder_crashes_on(val_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that dies on a record (here: its process is killed when record 3 comes) is a finding about
    that record; the check goes on in a fresh process and every other record is still decoded."""
    from dali_pipeline import decode_check

    real_check = decode_check._Worker.check
    asked: list[list[int]] = []

    def crash_on_record_3(self: decode_check._Worker, indices: list[int]) -> decode_check.Answer:
        asked.append(list(indices))
        if 3 in indices:
            self.process.kill()
            self.process.join()
        return real_check(self, indices)

    monkeypatch.setattr(decode_check._Worker, "check", crash_on_record_3)
    db = open_database(val_db)
    bad = decode_check.undecodable_records(db, range(len(db)), batch_size=8)
    assert [(i, "crashed" in reason) for i, reason in bad] == [(3, True)]
    assert sorted({i for chunk in asked for i in chunk}) == list(range(len(db)))  # every record was checked


@needs_dali
def test_verify_decode_names_a_record_dali_cannot_decode(val_db: Path, tmp_path: Path) -> None:
    import lmdb

    from dali_pipeline.decode_check import undecodable_records
    from lmdb_io import ImageFormat
    from lmdb_io.env import close_shared_env
    from lmdb_io.record import encode_record

    broken = tmp_path / "broken.lmdb"
    shutil.copytree(val_db, broken)
    n = len(open_database(broken))
    key = open_database(broken).key(7)
    close_shared_env(str(broken))
    env = lmdb.open(str(broken), map_size=0)
    with env.begin(write=True) as txn:  # a valid record (checksum fine) holding a JPEG with no image data
        txn.put(key, encode_record(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 300 + b"\xff\xd9", 0, ImageFormat.JPEG))
    env.close()
    bad = undecodable_records(open_database(broken), range(n), batch_size=16)
    close_shared_env(str(broken))
    assert [i for i, _ in bad] == [7] and key.decode() in bad[0][1]
    result = lmdb_io_cli("verify", str(broken), "--decode", "-q")
    assert result.returncode == ExitCode.BAD_RECORDS, result.stdout + result.stderr
    assert "DALI's CPU decoder" in result.stdout and f"1 of {n}" in result.stdout, result.stdout


@needs_dali
def test_forked_workers_leave_the_parents_dali_pipelines_alone(val_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DALI pipeline the parent holds in a reference cycle (a user's, or a loader dropped mid-epoch) waits
    for the garbage collector. A DataLoader worker forked meanwhile must not finalise it: DALI's shutdown in
    a process without the pipeline's threads crashes (SIGSEGV, seen in a full run of this suite). The
    worker collects garbage at once here, so that the test does not depend on when the collector runs."""
    from lmdb_dali_train.loaders import torch_loader
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    dali = make_dali_loader(ReadSpec(path=val_db, batch_size=4, train=False, crop=32, val_resize=40))
    next(iter(dali))
    dali.cycle = dali  # only the garbage collector can free it now
    del dali
    initialise = torch_loader.ignore_stop_signals

    def collect_then_initialise(worker: int) -> None:
        gc.collect()
        initialise(worker)

    monkeypatch.setattr(torch_loader, "ignore_stop_signals", collect_then_initialise)
    loader = make_torch_loader(
        ReadSpec(path=val_db, batch_size=8, train=False, crop=32, val_resize=40),
        workers=2,
        multiprocessing_context="fork",
    )
    assert sum(1 for _ in loader) == len(loader)
    gc.collect()  # the parent finalises it, safely
