"""The gpu tier: what only a CUDA machine shows (``make test-gpu``; ``python -m bench.gpu_check`` runs it first).

- the DALI loader on ``cuda:0`` (mixed decoding), train and val, float16 in channels-last memory and
  float32 contiguous, checked through the ``Batch`` contract;
- one ``train.py`` step with each loader under AMP bf16 and fp16 (grad scaler), a checkpoint written;
- checkpoint save and ``--resume`` / ``--evaluate --resume`` on the GPU (the checkpoint is loaded to the CPU);
- val parity of the GPU decoder against torchvision, chroma stress images included (the val decoder
  upsamples chroma as libjpeg does: ``jpeg_fancy_upsampling``);
- a checkpoint saved "with 8 GPUs" evaluated and resumed with one visible; the decode check's child on the
  GPU; after an (injected) GPU decode error no second pipeline, the CPU fallback on the GPU; ``train.py``
  continuing in a fresh process after a real decode error on the GPU;
- with 2 or more GPUs: torchrun of two ranks, DALI with ``--lmdb --val`` over bad records (one DALI fails
  on: exit 75, torchrun ``--max-restarts`` starts the ranks again), a checkpoint, ``--resume auto`` (NCCL,
  DDP, the gloo side group, bad-record agreement, DALI per local rank together).
- train: the mixed decoder's ROI decoding of the source's windows (hardware decoder share as trained)
  gives each sample the crop and flip the torch loader gives it.

Every test is marked ``gpu``: without CUDA the conftest skips it with one line. The helpers take the device
as a parameter (``torch.device("cuda", 0)`` here; ``cpu`` runs the same code on DALI's CPU operators and
``train.py --device cpu``), so the code paths can be dry-run on a machine without a GPU.

Time on one H100 (16 cores), estimated at 60-90 s, under the 2-minute target: start-up and imports ~4 s,
the generated data ~3 s, the three DALI epochs ~10 s (pipeline builds; the train one spawns its 4 source
workers), seven ``train.py`` processes of one or two steps each, 5-10 s apiece (interpreter, torch and CUDA
start-up, cuDNN autotuning of one shape; the ``-j 2`` DALI run starts two source workers), ~50 s, parity
over 49 images ~3 s; issue 19 added ~30 s (a checkpoint of 8 GPUs resumed on one, two train.py runs; the decode
check's child on the GPU), item 4 ~15 s (train.py continuing in a fresh process: two processes). ``python -m
bench.gpu_check`` gives the whole file 210 s before it counts as a timeout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, convert, copy_tree, repo_pythonpath, run_in_session, undecodable_database
from datagen import chroma_stress_jpegs
from test_bad_records import BAD, GARBAGE, _FailsOnce, bad_records_db  # noqa: F401 (a fixture)

from lmdb_dali_train.loaders.torch_loader import make_torch_loader
from lmdb_io import open_database
from lmdb_io.reading.constants import IMAGENET_MEAN, IMAGENET_STD
from lmdb_io.reading.plan import RankPlan
from lmdb_io.reading.spec import ReadSpec

pytestmark = pytest.mark.gpu

CUDA0 = torch.device("cuda", 0)
BATCH, CROP, VAL_RESIZE = 8, 64, 72
# normalised ImageNet values of 0..255 pixels lie in [(0 - 0.485) / 0.229, (1 - 0.406) / 0.225] = [-2.12, 2.64]
NORMALISED_RANGE = (-2.2, 2.7)
MAX_MEAN_ABS_DIFF = 3.0  # val parity: per image, uint8 levels (tests/test_loaders.py's CPU contract)
STRESS_DIR = "chroma-stress"
SUBPROCESS_TIMEOUT = 300.0


def _dali() -> None:
    pytest.importorskip("nvidia.dali")


# -- the DALI loader through the Batch contract ----------------------------------------------------


def dali_epoch(
    db: Path,
    device: torch.device,
    *,
    train: bool,
    half: bool,
    channels_last: bool,
    seed: int = 1,
    **options: Any,
) -> dict[int, torch.Tensor]:
    """One epoch of ``make_dali_loader`` on ``device`` (cuda: mixed decoding and GPU operators; cpu: DALI's
    CPU operators), every batch checked against the ``Batch`` contract. Returns each real sample's image
    (float32, CPU, CHW) by dataset index."""
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    database = open_database(db)
    n, targets = len(database), torch.from_numpy(database.targets.copy())
    loader = make_dali_loader(
        ReadSpec(path=db, batch_size=BATCH, train=train, seed=seed, crop=CROP, val_resize=VAL_RESIZE),
        device=device,
        dtype=torch.float16 if half else torch.float32,
        channels_last=channels_last,
        **options,
    )
    plan = RankPlan(n, BATCH, rank=0, world_size=1, seed=seed, shuffle=train, drop_last=train).for_epoch(0)
    assert len(loader) == len(plan) // BATCH == (n // BATCH if train else -(-n // BATCH))
    dtype = torch.float16 if half else torch.float32
    indices: list[int] = []
    real: list[bool] = []
    images: dict[int, torch.Tensor] = {}
    for batch in loader:
        x = batch.images
        assert x.shape == (BATCH, 3, CROP, CROP), x.shape  # NCHW-shaped whatever the memory layout
        assert x.dtype == dtype and x.device == device, (x.dtype, x.device)
        if channels_last:
            assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(), x.stride()
        else:
            assert x.is_contiguous(), x.stride()
        lo, hi = float(x.min()), float(x.max())
        assert NORMALISED_RANGE[0] <= lo < hi <= NORMALISED_RANGE[1], (lo, hi)  # normalised, not 0..255
        assert batch.labels.dtype == torch.int64 and batch.labels.shape == (BATCH,)
        assert batch.labels.device == device, batch.labels.device
        assert batch.indices.dtype == torch.int64 and batch.indices.shape == (BATCH,)
        assert batch.padding.dtype == torch.bool and batch.padding.shape == (BATCH,)
        assert torch.equal(batch.labels.cpu(), targets[batch.indices.cpu()])
        indices += batch.indices.tolist()
        real += (~batch.padding).tolist()
        pixels = x.float().cpu()
        for i, (index, pad) in enumerate(zip(batch.indices.tolist(), batch.padding.tolist(), strict=True)):
            if not pad:
                images[index] = pixels[i]
    assert indices == plan.indices.tolist()  # the epoch plan, in order
    assert real == (~plan.padding).tolist()
    counted = sorted(i for i, r in zip(indices, real, strict=True) if r)
    if train:
        assert all(real) and len(counted) == len(set(counted)) == n // BATCH * BATCH
    else:  # every sample counted once, the padding of the last batch masked
        assert counted == list(range(n))
    return images


def compare_val_layouts(db: Path, device: torch.device) -> float:
    """The val epoch as float16 channels-last and as float32 contiguous NCHW: the same pixels (so the
    NHWC -> NCHW view keeps the channel order). The source runs in the pipeline's thread (the train test
    covers the spawned source workers). Returns the worst per-image mean difference in uint8 levels."""
    half_cl = dali_epoch(db, device, train=False, half=True, channels_last=True, py_workers=0)
    full = dali_epoch(db, device, train=False, half=False, channels_last=False, py_workers=0)
    assert sorted(half_cl) == sorted(full)
    worst = max(float((to_pixels(half_cl[i]) - to_pixels(full[i])).abs().mean()) for i in full)
    assert worst <= 1.0, f"float16 channels-last and float32 NCHW differ by {worst:.2f} levels"
    return worst


def test_dali_train_loader_on_gpu_float16_channels_last(train_db: Path) -> None:
    _dali()
    dali_epoch(train_db, CUDA0, train=True, half=True, channels_last=True)  # py_workers: the GPU default, 4


def test_dali_val_loader_on_gpu_float16_channels_last_and_float32_nchw(val_db: Path) -> None:
    _dali()
    compare_val_layouts(val_db, CUDA0)


# -- train.py on the device -------------------------------------------------------------------------


def run_train(*args: str | Path, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python train.py ARGS`` with this interpreter, in its own process group (killed whole on timeout).
    PYTHONPATH keeps what this process was given (a GPU machine may keep DALI, lmdb and xxhash there)."""
    cmd = [sys.executable, str(REPO / "train.py"), *map(str, args)]
    return run_in_session(cmd, {**os.environ, "PYTHONPATH": repo_pythonpath()}, timeout, "train.py timed out")


def small_run(device: torch.device | str, out: Path) -> list[str]:
    """The flags every run here shares: resnet18, batch 8, crop 64, a log event at every step."""
    sizes = ["-b", str(BATCH), "--crop-size", str(CROP), "--val-resize", str(VAL_RESIZE)]
    return [
        "-a",
        "resnet18",
        *sizes,
        "--print-freq",
        "1",
        "--device",
        torch.device(device).type,
        "--output-dir",
        str(out),
    ]


def all_events(out: Path) -> list[dict[str, Any]]:
    """The events of ``out/log.jsonl``, of every run that wrote there."""
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]


def events(out: Path) -> list[dict[str, Any]]:
    """The events of ``out/log.jsonl`` written by the latest run (the log is appended to across runs)."""
    lines = all_events(out)
    starts = [i for i, e in enumerate(lines) if e["event"] == "start"]
    return lines[starts[-1] :] if starts else lines


def checkpoint_at(out: Path, step: int) -> dict[str, Any]:
    path = out / f"checkpoint-step{step:09d}.pt"
    assert path.is_file(), f"no {path.name} in {sorted(p.name for p in out.iterdir())}"
    return torch.load(path, map_location="cpu", weights_only=True)


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"


def train_one_step(
    db: Path, out: Path, device: torch.device | str, loader: str, amp: str, workers: int, channels_last: bool
) -> dict[str, Any]:
    """``train.py --max-steps 1``: exit 0, one train event with a finite loss, a checkpoint at step 1 (with
    the grad scaler's state exactly under fp16). Returns the train event."""
    flags = ["--loader", loader, "--lmdb", "--train", db, "--amp", amp, "-j", str(workers), "--max-steps", "1"]
    proc = run_train(*small_run(device, out), *flags, *(["--channels-last"] if channels_last else []))
    assert proc.returncode == 0, tail(proc)
    logged = events(out)
    assert logged[0]["config"]["optim"]["amp"] == amp and logged[0]["config"]["data"]["loader"] == loader
    train = [e for e in logged if e["event"] == "train"]
    assert len(train) == 1 and train[0]["step"] == 1, train
    assert math.isfinite(train[0]["loss"]), train[0]
    assert logged[-1]["event"] == "end" and logged[-1]["reason"] == "max_steps", logged[-1]
    saved = checkpoint_at(out, 1)
    assert saved["global_step"] == 1 and saved["epoch"] == 0 and saved["step_in_epoch"] == 1
    assert bool(saved["scaler"]) == (amp == "fp16"), saved["scaler"]  # GradScaler only under fp16
    return train[0]


# bf16 with the recipe's channels-last and loader workers (DALI: spawned source processes); fp16 with
# contiguous NCHW and no workers: the four runs cover both memory formats and both source paths.
STEP_RUNS = [
    pytest.param("dali", "bf16", 2, True, id="dali-bf16-channels_last-j2"),
    pytest.param("dali", "fp16", 0, False, id="dali-fp16-j0"),
    pytest.param("torch", "bf16", 2, True, id="torch-bf16-channels_last-j2"),
    pytest.param("torch", "fp16", 0, False, id="torch-fp16-j0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("loader, amp, workers, channels_last", STEP_RUNS)
def test_one_training_step_on_gpu(
    train_db: Path, tmp_path: Path, loader: str, amp: str, workers: int, channels_last: bool
) -> None:
    if loader == "dali":
        _dali()
    train_one_step(train_db, tmp_path / "run", "cuda", loader, amp, workers, channels_last)


# -- checkpoints and --resume on the device ---------------------------------------------------------


def resume_flags(db: Path) -> list[str | Path]:
    """The resume runs: the torch loader without workers (no DALI needed: the point is the checkpoint) and
    fp16, so the grad scaler's state goes through the checkpoint too."""
    return ["--loader", "torch", "-j", "0", "--lmdb", "--train", db, "--amp", "fp16"]


def train_two_steps(db: Path, out: Path, device: torch.device | str) -> Path:
    proc = run_train(*small_run(device, out), *resume_flags(db), "--max-steps", "2")
    assert proc.returncode == 0, tail(proc)
    assert checkpoint_at(out, 2)["global_step"] == 2
    return out


def resume_auto(db: Path, out: Path, device: torch.device | str) -> None:
    """``--resume auto --max-steps 1`` after two steps: continues at global step 3, checkpoint at 3."""
    proc = run_train(*small_run(device, out), *resume_flags(db), "--resume", "auto", "--max-steps", "1")
    assert proc.returncode == 0, tail(proc)
    assert "global step 2" in proc.stdout and "resumed from" in proc.stdout, proc.stdout
    train = [e for e in events(out) if e["event"] == "train"]
    assert [e["step"] for e in train] == [3] and math.isfinite(train[0]["loss"]), train
    saved = checkpoint_at(out, 3)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 3, 3)


def evaluate_resumed(db: Path, val: Path, ckpt: Path, out: Path, device: torch.device | str) -> dict[str, Any]:
    """``--evaluate --resume CKPT --val VAL``: exit 0, one val event counting every val image, no checkpoint."""
    flags = [*resume_flags(db), "--val", val, "--evaluate", "--resume", ckpt]
    proc = run_train(*small_run(device, out), *flags)
    assert proc.returncode == 0, tail(proc)
    val_events = [e for e in events(out) if e["event"] == "val"]
    assert len(val_events) == 1, val_events
    metrics = val_events[0]
    assert metrics["count"] == len(open_database(val)) and math.isfinite(metrics["loss"]), metrics
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0, metrics
    assert not list(out.glob("checkpoint-*")), "--evaluate wrote a checkpoint"
    return metrics


@pytest.fixture(scope="module")
def two_step_run(train_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of two steps on the GPU, its checkpoint at step 2."""
    return train_two_steps(train_db, tmp_path_factory.mktemp("gpu-resume") / "run", "cuda")


@pytest.mark.slow
def test_resume_auto_on_gpu_continues_at_step_3(two_step_run: Path, train_db: Path, tmp_path: Path) -> None:
    out = shutil.copytree(two_step_run, tmp_path / "run")
    resume_auto(train_db, out, "cuda")


@pytest.mark.slow
def test_evaluate_resume_on_gpu(two_step_run: Path, train_db: Path, val_db: Path, tmp_path: Path) -> None:
    evaluate_resumed(train_db, val_db, two_step_run / "checkpoint-step000000002.pt", tmp_path / "eval", "cuda")


@pytest.mark.slow
def test_a_checkpoint_saved_with_8_gpus_evaluates_and_resumes_on_one(
    two_step_run: Path, train_db: Path, val_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step-2 checkpoint rewritten as an 8-GPU process saves its RNG (``get_rng_state_all``: 8 CUDA states),
    then ``CUDA_VISIBLE_DEVICES=0 train.py --evaluate --resume`` and ``--resume auto``: each restores its own
    device's state (before: IndexError from ``set_rng_state_all``)."""
    from lmdb_dali_train import checkpoint

    saved = checkpoint.load(str(two_step_run / "checkpoint-step000000002.pt"))
    saved.pop("format_version")
    (state,) = saved["rng"]["cuda"]
    saved["rng"]["cuda"] = [state.clone() for _ in range(8)]
    out = tmp_path / "run"
    path = Path(checkpoint.save(str(out), saved))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    evaluate_resumed(train_db, val_db, path, tmp_path / "eval", "cuda")  # run_train passes the environment on
    resume_auto(train_db, out, "cuda")


# -- val parity of the GPU decoder ------------------------------------------------------------------


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Normalised images (N)CHW back to 0..255 pixel values (as tests/test_loaders.py denormalises)."""
    shape = (3, 1, 1) if images.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(shape)
    std = torch.tensor(IMAGENET_STD).view(shape)
    return (images.float().cpu() * std + mean) * 255


def build_parity_db(val_dir: Path, root: Path) -> Path:
    """The generated val images plus ``chroma_stress_jpegs()`` (in ``chroma-stress/``), in one database."""
    tree = copy_tree(val_dir, root / "tree")
    (tree / STRESS_DIR).mkdir()
    for i, blob in enumerate(chroma_stress_jpegs()):
        (tree / STRESS_DIR / f"stress-{i}.jpg").write_bytes(blob)
    out = root / "parity.lmdb"
    convert(tree, out)
    return out


def val_parity(db: Path, device: torch.device, batch: int = 16) -> dict[str, float]:
    """Per-image mean |DALI val pipeline on ``device`` - torchvision's val transform| in uint8 levels, after
    denormalising, by source path (default val geometry: resize 256, center crop 224)."""
    from lmdb_dali_train.loaders.dali_loader import make_dali_loader

    database = open_database(db)
    spec = ReadSpec(path=db, batch_size=batch, train=False)
    dali = make_dali_loader(spec, device=device, py_workers=0)
    reference = make_torch_loader(spec, workers=0)
    diffs: dict[int, float] = {}
    for a, b in zip(dali, reference, strict=True):
        same = torch.equal(a.indices.cpu(), b.indices) and torch.equal(a.padding.cpu(), b.padding)
        if not (same and torch.equal(a.labels.cpu(), b.labels.cpu()) and a.images.shape == b.images.shape):
            pytest.fail("the loaders disagree on samples, labels or shapes: not a decoder difference")
        diff = (to_pixels(a.images) - to_pixels(b.images)).abs().mean(dim=(1, 2, 3))
        for index, pad, d in zip(a.indices.tolist(), a.padding.tolist(), diff.tolist(), strict=True):
            if not pad:
                diffs[index] = d
    if sorted(diffs) != list(range(len(database))):
        pytest.fail(f"{len(diffs)} of {len(database)} images compared")
    paths = database.paths()
    return {paths[i]: d for i, d in diffs.items()}


def parity_summary(diffs: dict[str, float]) -> str:
    stress = {p: d for p, d in diffs.items() if p.startswith(STRESS_DIR + "/")}
    ordinary = {p: d for p, d in diffs.items() if p not in stress}
    parts = []
    for name, group in (("chroma stress", stress), ("generated val", ordinary)):
        worst = max(group, key=group.__getitem__)
        parts.append(f"{name}: {len(group)} images, worst {group[worst]:.2f} ({worst})")
    return "; ".join(parts)


@pytest.fixture(scope="module")
def parity_db(val_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_parity_db(val_dir, tmp_path_factory.mktemp("gpu-parity"))


def test_val_parity_gpu_decoder_vs_torchvision(parity_db: Path) -> None:
    """The GPU val pipeline (mixed decoding with ``jpeg_fancy_upsampling``, GPU resize and crop) within 3/255
    of torchvision's PIL path, chroma stress images included."""
    _dali()
    diffs = val_parity(parity_db, CUDA0)
    assert sum(p.startswith(STRESS_DIR + "/") for p in diffs) == 8
    worst = max(diffs.values())
    assert worst <= MAX_MEAN_ABS_DIFF, f"per-image mean abs difference over 3/255: {parity_summary(diffs)}"


# -- a decode error on the GPU: the check in a spawned child on the same GPU, no second pipeline ---------


def test_gpu_decode_check_and_cpu_fallback_after_a_gpu_pipeline_error(
    train_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode check's child decodes on GPU 0 (nvJPEG and the hardware decoder): good records pass and a
    record no decoder reads is named. Then a pipeline error on the GPU (injected: no JPEG is known that only
    nvJPEG rejects) whose culprit the check names: no second pipeline is built in the process, the epoch
    completes from the CPU fallback (float16 channels-last images on GPU 0, as the pipeline gave) and the
    loader asks for a fresh process."""
    _dali()
    from dali_pipeline import decode_check
    from lmdb_dali_train.loaders import dali_loader

    db = open_database(train_db)
    assert decode_check.undecodable_records(db, range(len(db)), device_id=0) == []
    order = RankPlan(len(db), BATCH, seed=1).for_epoch(0).indices.tolist()
    culprit, asked = order[BATCH + 1], []

    def gpu_rejects(database: Any, indices: list[int], **kw: Any) -> list[tuple[int, str]]:
        asked.append(kw.get("device_id"))
        return [(culprit, "does not decode with GPU 0's nvJPEG (stand-in)")] * (culprit in indices)

    monkeypatch.setattr(decode_check, "undecodable_records", gpu_rejects)
    spec = ReadSpec(path=train_db, batch_size=BATCH, train=True, seed=1, crop=CROP)
    loader = dali_loader.make_dali_loader(spec, device=CUDA0, py_workers=0, dtype=torch.float16, channels_last=True)
    assert isinstance(loader, dali_loader.DALILoader) and loader.opts.device_id == 0
    loader._iterator = _FailsOnce(loader._iterator, fail_at=2)
    builds: list[Any] = []
    monkeypatch.setattr(dali_loader, "build_pipeline", lambda *a: builds.append(a))
    try:
        batches = list(loader)
    finally:
        loader.close()
    indices = [i for batch in batches for i in batch.indices.tolist()]
    assert set(asked) == {0} and culprit not in indices and len(indices) == len(order) // BATCH * BATCH
    assert loader.needs_fresh_process and builds == []
    for batch in batches:
        assert batch.images.device == CUDA0 and batch.images.dtype == torch.float16
        assert batch.images.is_contiguous(memory_format=torch.channels_last) and batch.labels.device == CUDA0


def test_train_py_on_the_gpu_continues_in_a_fresh_process_after_a_decode_error(tmp_path: Path) -> None:
    """``train.py --loader dali`` on GPU 0 over a record the mixed decoder fails on (a truncated JPEG): the
    child check on the GPU names it, the step completes from the CPU fallback, the run saves and the
    process replaces itself with its continuation, which replaces the record from the start and finishes."""
    _dali()
    from dali_pipeline.decode_check import undecodable_records

    db = undecodable_database(tmp_path / "data", count=48, bad=21)
    rejected = undecodable_records(open_database(db), [21], device_id=0)
    assert [i for i, _ in rejected] == [21], f"GPU 0's decoders accept the truncated JPEG: {rejected}"
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *map(str, small_run("cuda", out)[8:]), "--loader", "dali"]
    cmd += ["--lmdb", "--train", str(db), "-a", "resnet18", "--crop-size", "32", "-b", "4", "--epochs", "2"]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    proc = run_in_session(cmd, env, SUBPROCESS_TIMEOUT, "train.py timed out")
    assert proc.returncode == 0, tail(proc)
    assert "continuing in a fresh process" in proc.stdout, tail(proc)
    ends = [e["reason"] for e in all_events(out) if e["event"] == "end"]
    assert ends == ["fresh_process", "done"], ends
    listed = (out / "bad-records.tsv").read_text().strip().splitlines()
    assert len(listed) == 2 and open_database(db).key(21).decode() in listed[1], listed


# -- two GPUs: torchrun, NCCL, DDP, the gloo side group, bad records, DALI per local rank ----------------


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_torchrun_dali_val_checkpoint_resume_and_bad_records(
    bad_records_db: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """``torchrun --nproc-per-node 2 --max-restarts 1`` with DALI on each local rank's GPU, --lmdb and --val,
    on a database with bad records (a garbage JPEG that DALI's val pipeline fails on: the GPU check child
    names it, validation completes on the CPU fallback, the ranks agree on it over the gloo side group under
    NCCL, save at the epoch's end and exit 75; torchrun starts them again and ``--resume auto`` continues,
    the record replaced from the start); then ``--evaluate`` of the last checkpoint on both GPUs, which
    replaces the records the checkpoint lists without meeting them."""
    _dali()
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launcher += ["--max-restarts", "1"]
    flags = ["--loader", "dali", "--lmdb", "--train", bad_records_db, "--val", bad_records_db, "-b", "4", "-j", "2"]
    common = [*small_run("cuda", out)[8:], "-a", "resnet18", "--crop-size", "32", "--val-resize", "36", *flags]
    common += ["--resume", "auto"]
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    first = run_in_session(
        [*launcher, str(REPO / "train.py"), *map(str, common), "--epochs", "2"],
        env,
        SUBPROCESS_TIMEOUT,
        "torchrun timed out",
    )
    assert first.returncode == 0, tail(first)
    logged = events(out)
    assert logged[0]["world_size"] == 2, logged[:3]
    assert [e["epoch"] for e in all_events(out) if e["event"] == "val"] == [0, 1], tail(first)
    assert [e["reason"] for e in all_events(out) if e["event"] == "end"] == ["fresh_process", "done"], tail(first)
    listed = (out / "bad-records.tsv").read_text()
    rows = [row.split("\t") for row in listed.strip().splitlines()[1:]]
    keys = {open_database(bad_records_db).key(i).decode() for i in BAD}
    val_keys, train_keys = ([row[0] for row in rows if row[-1] == split] for split in ("val", "train"))
    assert sorted(val_keys) == sorted(keys) and set(train_keys) <= keys, listed  # a record once per split
    assert len(train_keys) == len(set(train_keys)), listed
    steps = [e["step"] for e in logged if e["event"] == "train"][-1]
    assert checkpoint_at(out, steps)["world_size"] == 2
    last = out / f"checkpoint-step{steps:09d}.pt"
    evaluate = ["--evaluate", "--resume", str(last), "--val", str(bad_records_db), "--output-dir", str(out)]
    second = run_in_session(
        [
            *launcher[:-2],
            str(REPO / "train.py"),
            *common[common.index("--device") :][:2],
            "-b",
            "4",
            "--lmdb",
            *evaluate,
        ],
        env,
        SUBPROCESS_TIMEOUT,
        "torchrun timed out",
    )
    assert second.returncode == 0, tail(second)
    (measured,) = [e for e in events(out) if e["event"] == "val"]
    assert measured["count"] == len(open_database(bad_records_db)) - len(BAD), measured  # each good one once
    assert (out / "bad-records.tsv").read_text() == listed  # known from the checkpoint: not met again


def test_train_gpu_roi_decoding_gives_each_sample_the_torch_loaders_crop(train_db: Path) -> None:
    """Mixed ``image_slice`` of each sample's ``train_view`` window (``hw_decoder_load`` 0.65: the A100/H100
    hardware decoder takes its share), GPU resize, flip and normalize: within decoder and resampler rounding
    of the torch loader's crop of the same window for nearly every sample (a different crop differs by tens
    of levels; the train decoder upsamples chroma its own way, so the bound is looser than validation's)."""
    _dali()
    from test_loaders import train_differences

    found = sorted(train_differences(train_db, batch=BATCH, device=CUDA0, seed=5, crop=CROP).values())
    assert len(found) >= BATCH
    median, p95 = found[len(found) // 2], found[int(0.95 * (len(found) - 1))]
    assert median <= MAX_MEAN_ABS_DIFF and p95 <= 2 * MAX_MEAN_ABS_DIFF, (median, p95, found[-5:])
