"""Command line of ``train.py``: flags familiar from PyTorch-LMDB's main.py and torchvision's reference
trainer, grouped as the run configuration is (``config.RunConfig``: data, optimisation, run control,
distributed), each explained in ``--help``. Parsing only: ``config_file`` adds a YAML file and a resumed
checkpoint's flags, ``config`` checks and resolves them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lmdb_io import __version__
from lmdb_io.reading.resolution import ROUND_TO

from .exit_codes import ExitCode
from .progname import prog_name

# argparse group titles; config.RunConfig's sections follow them
DATA, OPTIMISATION, RUN, DISTRIBUTED = (
    "data",
    "model and optimisation",
    "run control",
    "distributed (torchrun's environment is used when present)",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("train.py"),
        description="Train a torchvision classifier under DDP from an lmdb_io database (or an ImageFolder tree) "
        "with the DALI loader (GPU decoding; CPU operators without a GPU) or the torchvision one.",
        epilog="Examples:\n"
        "  torchrun --nproc-per-node 8 train.py --loader dali --lmdb --train train.lmdb --val val.lmdb\n"
        "  python train.py --loader torch --train data/train --val data/val -a resnet18 --device cpu\n"
        "  python train.py --synthetic -b 256 --amp bf16 --channels-last --max-steps 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group(DATA)
    data.add_argument(
        "--train",
        metavar="PATH",
        help="training data: an lmdb_io database with --lmdb, else an ImageFolder tree (DIR/<class>/<image>)",
    )
    data.add_argument("--val", metavar="PATH", help="validation data, same kind as --train (optional)")
    data.add_argument("--lmdb", action="store_true", help="--train/--val are databases made by convert.py")
    data.add_argument(
        "--loader",
        choices=("dali", "torch"),
        default="dali",
        help="dali: DALI pipeline (GPU 'mixed' decoding, CPU operators without a GPU); with --lmdb it "
        "reads through a Python source, without it through DALI's file reader (sharded by "
        "global rank, padded). torch: torchvision transforms in a DataLoader. Default: dali",
    )
    data.add_argument(
        "--synthetic",
        action="store_true",
        help="random batches resident on the device, no loader: the training speed ceiling",
    )
    data.add_argument(
        "-j",
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="torch loader: DataLoader worker processes (default: cores per process, at most 8); "
        "dali loader: Python processes running the LMDB source (default: 4 on a GPU, 0 on CPU)",
    )
    data.add_argument(
        "--dali-threads",
        type=int,
        default=None,
        metavar="N",
        help="DALI's own CPU threads per training pipeline (default: CPU cores per rank, at most 8; validation "
        "gets half, at least 2)",
    )
    data.add_argument(
        "--hw-decoder-load",
        type=float,
        default=None,
        metavar="F",
        help="share of train JPEGs for the GPU's hardware decoder (A100/H100/H200), 0-1 (default: 0.65 with 8 "
        "or more CPU cores per rank, more with fewer: 0.91 with 2)",
    )
    data.add_argument(
        "--crop-size",
        type=int,
        default=224,
        metavar="PX",
        help="training crop, and validation's unless --val-crop-size (224)",
    )
    data.add_argument(
        "--val-resize",
        type=int,
        default=256,
        metavar="PX",
        help="validation: shorter side resized to this before the center crop (256)",
    )
    data.add_argument(
        "--val-crop-size",
        type=int,
        default=None,
        metavar="PX",
        help="validation: the center crop's side, both loaders (default --crop-size). FFCV's ImageNet recipe "
        "validates at 256 px from the center 224/256 of the shorter side: --val-resize 293 --val-crop-size 256",
    )
    data.add_argument(
        "--val-tta",
        action="store_true",
        help="validation: test-time augmentation, the average of the model's outputs on each image and on its "
        "horizontal mirror (FFCV's lr_tta; twice the validation compute)",
    )
    data.add_argument(
        "--min-res",
        type=int,
        default=None,
        metavar="PX",
        help="progressive resizing (FFCV's schedule): the training crop up to epoch --start-ramp "
        f"(default --crop-size; a multiple of {ROUND_TO} when it differs from --max-res)",
    )
    data.add_argument(
        "--max-res",
        type=int,
        default=None,
        metavar="PX",
        help=f"progressive resizing: the training crop from epoch --end-ramp on (default --crop-size; a multiple "
        f"of {ROUND_TO} when it differs from --min-res)",
    )
    data.add_argument(
        "--start-ramp",
        type=int,
        default=None,
        metavar="EPOCH",
        help="progressive resizing: the last epoch (counted from 0) at --min-res; needed when --min-res and "
        "--max-res differ",
    )
    data.add_argument(
        "--end-ramp",
        type=int,
        default=None,
        metavar="EPOCH",
        help=f"progressive resizing: the first epoch at --max-res; in between the crop grows linearly, rounded "
        f"to a multiple of {ROUND_TO}. The batch size stays, validation keeps its own crop (--val-crop-size), "
        "a resumed run trains at its epoch's size. Needs --lmdb with --loader dali",
    )
    data.add_argument(
        "--log-keys",
        action="store_true",
        help="each global rank appends the keys of the samples it trained on to "
        "OUTPUT_DIR/keys-rank<R>.tsv (epoch, step, key): to audit sharding",
    )

    model = p.add_argument_group(OPTIMISATION)
    model.add_argument(
        "-a",
        "--arch",
        default="resnet50",
        metavar="ARCH",
        help="a torchvision classification model (resnet50, vit_b_16, ...), or timm/NAME for a timm model "
        "(pip install timm) (default resnet50)",
    )
    model.add_argument(
        "--weights",
        metavar="PATH",
        help="start from these weights (fine-tuning): a state dict saved with torch.save, e.g. torchvision's "
        "or a run's weights; a classifier head of another class count is re-initialised (one line says so)",
    )
    model.add_argument("--epochs", type=int, default=90, help="total epochs (default 90)")
    model.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=256,
        metavar="N",
        help="batch size per process; the global batch is N x world size (default 256)",
    )
    model.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="learning rate for a global batch of 256, scaled linearly to the real global batch (default 0.1)",
    )
    model.add_argument(
        "--warmup-epochs",
        "--lr-peak-epoch",
        type=float,
        default=1.0,
        dest="warmup_epochs",
        help="epochs of linear warm-up, at whose end the lr peaks (--lr-peak-epoch: FFCV's name), then the "
        "--lr-schedule decay (default 1)",
    )
    model.add_argument(
        "--lr-schedule",
        choices=("cosine", "triangular"),  # schedule.SCHEDULES (not imported here: it imports torch)
        default="cosine",
        help="cosine: warm-up from 0, then cosine decay to 0. triangular: FFCV's cyclic schedule, linear from "
        "1e-4 x lr up to lr at --lr-peak-epoch, then linear down to 0 at the last step. Both move every step "
        "and count samples seen, so a resume on another global batch continues (default cosine)",
    )
    model.add_argument(
        "--opt",
        choices=("sgd", "adamw"),
        default="sgd",
        help="sgd: SGD with --momentum, --wd as L2 weight decay. adamw: AdamW (betas 0.9, 0.999), --wd as "
        "decoupled weight decay, --momentum unused; it wants a far smaller --lr than SGD, e.g. --lr 0.00025 "
        "(1e-3 at a global batch of 1024) with --wd 0.05 (default sgd)",
    )
    model.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    model.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="wd", help="weight decay (1e-4)")
    model.add_argument(
        "--no-bn-weight-decay",
        action="store_true",
        help="no weight decay on batch-norm layers' weights and biases (FFCV's recipe); other biases and the "
        "classifier keep --wd",
    )
    model.add_argument(
        "--blurpool",
        action="store_true",
        help="blur (3x3 binomial filter) the input of every strided convolution with 16 or more input "
        "channels, as FFCV's ImageNet recipe does; torchvision ResNets only (resnet*, resnext*, wide_resnet*)",
    )
    model.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (0)")
    model.add_argument(
        "--amp",
        choices=("bf16", "fp16", "off"),
        default=None,
        help="mixed precision (default: bf16 on GPUs that have it, else fp16 with a grad scaler; "
        "off on CPU). fp16 needs CUDA",
    )
    model.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format end to end (DALI hands NHWC batches directly)"
    )
    model.add_argument("--compile", action="store_true", help="torch.compile the model")
    model.add_argument("--seed", type=int, default=0, help="seed for shuffling, augmentation and init (default 0)")

    run = p.add_argument_group(RUN)
    run.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: CUDA when available, else CPU (default auto)",
    )
    run.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimizer steps in this run (the same N on every rank), save, exit",
    )
    run.add_argument(
        "--print-freq",
        type=int,
        default=10,
        metavar="N",
        help="print and log loss, accuracy, images/s and data-wait every N steps (default 10)",
    )
    run.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="the run's folder: its log.jsonl, config.yaml and checkpoints. A fresh run refuses a folder that "
        "holds another run; default: a new folder runs/<arch>-<date>-<time>, printed at the start",
    )
    run.add_argument(
        "--keep-checkpoints",
        type=int,
        default=2,
        metavar="N",
        help="how many resumable checkpoints (checkpoint-step<N>.pt, the ones --resume auto picks from) to keep: "
        "the newest N (default 2); best.pt (best val top-1) and weights.pt (the final weights) are apart from them",
    )
    run.add_argument(
        "--save-every",
        type=int,
        default=None,
        metavar="N",
        help="also save a resumable checkpoint every N optimizer steps (global steps), mid-epoch: a crash "
        "then loses at most N steps (--resume auto). Checkpoints rotate as --keep-checkpoints says "
        "(default: at each epoch's end and at a stop only)",
    )
    run.add_argument(
        "--save-every-minutes",
        type=float,
        default=None,
        metavar="M",
        help="also save a resumable checkpoint when M minutes have passed since the last save (rank 0's "
        "clock; every rank saves at the same step), e.g. 30 on a cluster: a killed node, an OOM or a "
        "pre-emption loses at most M minutes (default: off)",
    )
    run.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue a run from a checkpoint, with the flags it was trained with (give only what changes: "
        "paths, workers, ...); auto: the newest intact one in --output-dir (none: start the run there)",
    )
    run.add_argument(
        "--force-resume", action="store_true", help="resume even if the checkpoint was trained on a different database"
    )
    run.add_argument("--evaluate", action="store_true", help="only evaluate on --val (weights from --resume)")
    run.add_argument(
        "--max-bad-records",
        type=int,
        default=10,
        metavar="N",
        help="a bad record (fails its checksum, claims too many pixels in its image header, or does not "
        "decode) is replaced by another sample of the rank's plan, named in the log and in "
        "OUTPUT_DIR/bad-records.tsv, and the run goes on; more than N distinct ones in a run stop it with "
        f"a checkpoint and exit code {int(ExitCode.BAD_RECORDS)} (default 10). One DALI fails to decode: the "
        "run saves and continues in a fresh process (several processes exit "
        f"{int(ExitCode.RESTART)}: torchrun --max-restarts with --resume auto restarts them)",
    )

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="flags from a YAML file: their names with underscores (batch_size: 256), flat or under "
        "data/optim/run/dist, as a run's config.yaml holds them; flags on the command line win",
    )
    dist = p.add_argument_group(DISTRIBUTED)
    dist.add_argument(
        "--multiprocessing-distributed",
        action="store_true",
        help="spawn --procs-per-node processes on this node (PyTorch-LMDB style); the global world is "
        "world-size x procs-per-node",
    )
    dist.add_argument(
        "--procs-per-node",
        type=int,
        default=None,
        metavar="N",
        help="with --multiprocessing-distributed: processes per node (default: GPUs, or 1 on CPU)",
    )
    dist.add_argument("--world-size", type=int, default=1, help="number of nodes with --multiprocessing-distributed")
    dist.add_argument("--rank", type=int, default=0, help="node rank with --multiprocessing-distributed")
    dist.add_argument("--dist-url", default="env://", help="rendezvous URL, e.g. tcp://10.1.1.20:23456 (env://)")
    dist.add_argument(
        "--dist-backend", choices=("nccl", "gloo"), default=None, help="default: nccl on GPUs, gloo on CPU"
    )
    dist.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a rank waits for the others at start-up and in any collective before failing (600)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
