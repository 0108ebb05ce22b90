"""Train and validation pipelines as pure functions of a source and options.

The graph is the same on a GPU and on the CPU: with a device id the decoder runs ``mixed`` (nvJPEG,
hardware decoder where present) and the rest on the GPU; with ``device_id=None`` every operator is a
CPU one. Train: random-resized-crop fused into decoding (area 0.08-1, aspect 3/4-4/3, 10 attempts, as
torchvision's RandomResizedCrop), resize to the crop, random flip, normalize. Validation: resize the
shorter side and center crop with torchvision's integer arithmetic, normalize.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from .compat import no_exif_rotation, supported
from .val_geometry import resize_and_center_crop

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
OUTPUT_NAMES = ("images", "labels", "indices", "real")


@dataclass(frozen=True)
class PipelineOptions:
    """Everything that shapes a pipeline; defaults suit ImageNet-style training on one GPU."""

    batch_size: int
    device_id: int | None = None  # None: CPU operators only
    num_threads: int = 4  # DALI's own CPU threads
    py_workers: int = 0  # Python processes running the source (0: in the pipeline's thread)
    prefetch: int = 2  # batches queued ahead, in the pipeline and in the parallel source
    crop: int = 224
    val_resize: int = 256
    half: bool = False  # float16 output instead of float32
    channels_last: bool = False  # NHWC instead of NCHW
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the A100/H100 hardware decoder
    preallocate_width_hint: int = 0
    preallocate_height_hint: int = 0
    seed: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.device_id is not None


def _read(source: Callable, opts: PipelineOptions) -> list:
    parallel = opts.py_workers > 0
    extra: dict[str, Any] = {"prefetch_queue_depth": opts.prefetch} if parallel else {}
    return fn.external_source(source=source, num_outputs=len(OUTPUT_NAMES), batch=False, parallel=parallel, **extra)


def _decoder_args(schema: str, opts: PipelineOptions) -> dict[str, Any]:
    args: dict[str, Any] = {"output_type": types.RGB, **no_exif_rotation(schema)}
    if opts.on_gpu:
        args.update(
            supported(
                schema,
                hw_decoder_load=opts.hw_decoder_load,
                preallocate_width_hint=opts.preallocate_width_hint,
                preallocate_height_hint=opts.preallocate_height_hint,
            )
        )
    return args


def _normalize(images: Any, opts: PipelineOptions, mirror: Any = None) -> Any:
    extra = {"mirror": mirror} if mirror is not None else {}
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT16 if opts.half else types.FLOAT,
        output_layout="HWC" if opts.channels_last else "CHW",
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        **extra,
    )


def _outputs(images: Any, labels: Any, indices: Any, real: Any, opts: PipelineOptions) -> tuple:
    return images, (labels.gpu() if opts.on_gpu else labels), indices, real


def train_augment(encoded: Any, opts: PipelineOptions) -> Any:
    """Decode with a random-resized crop, resize to the crop size, random flip, normalize."""
    images = fn.decoders.image_random_crop(
        encoded,
        device="mixed" if opts.on_gpu else "cpu",
        random_area=[0.08, 1.0],
        random_aspect_ratio=[3 / 4, 4 / 3],
        num_attempts=10,
        **_decoder_args("decoders__ImageRandomCrop", opts),
    )
    images = fn.resize(images, resize_x=opts.crop, resize_y=opts.crop, interp_type=types.INTERP_LINEAR, antialias=True)
    return _normalize(images, opts, mirror=fn.random.coin_flip(probability=0.5))


def val_transform(encoded: Any, opts: PipelineOptions) -> Any:
    """Decode, resize the shorter side and center crop as torchvision does, normalize."""
    images = fn.decoders.image(
        encoded, device="mixed" if opts.on_gpu else "cpu", **_decoder_args("decoders__Image", opts)
    )
    images = resize_and_center_crop(
        images, encoded, resize=opts.val_resize, crop=opts.crop, device="gpu" if opts.on_gpu else "cpu"
    )
    return _normalize(images, opts)


@pipeline_def
def _lmdb_pipeline(source: Callable, opts: PipelineOptions, train: bool) -> tuple:
    encoded, labels, indices, real = _read(source, opts)
    images = train_augment(encoded, opts) if train else val_transform(encoded, opts)
    return _outputs(images, labels, indices, real, opts)


FILE_READER_NAME = "files"


@pipeline_def
def _folder_pipeline(root: str, opts: PipelineOptions, train: bool, rank: int, world_size: int) -> tuple:
    """An ImageFolder tree through DALI's file reader, sharded by global rank and padded, so every rank
    reads the same count. The reader gives no dataset index: ``indices`` is -1, ``real`` 1."""
    encoded, labels = fn.readers.file(
        file_root=root,
        shard_id=rank,
        num_shards=world_size,
        random_shuffle=train,
        pad_last_batch=True,
        seed=opts.seed,
        name=FILE_READER_NAME,
    )
    images = train_augment(encoded, opts) if train else val_transform(encoded, opts)
    labels = fn.cast(labels, dtype=types.INT64)
    return _outputs(
        images, labels, fn.constant(idata=-1, dtype=types.INT64) * 1, fn.constant(idata=1, dtype=types.UINT8) * 1, opts
    )


def _pipeline_args(opts: PipelineOptions) -> dict[str, Any]:
    return dict(
        batch_size=opts.batch_size,
        num_threads=opts.num_threads,
        device_id=opts.device_id,
        seed=opts.seed,
        prefetch_queue_depth=opts.prefetch,
        py_num_workers=max(1, opts.py_workers),
        py_start_method="spawn",
    )


def build_pipeline(source: Callable, opts: PipelineOptions, train: bool) -> Pipeline:
    """A built pipeline over a per-sample source. Python workers start with spawn: DALI cannot fork
    them once CUDA is initialised, and building a GPU pipeline initialises it."""
    pipe = _lmdb_pipeline(source, opts, train, **_pipeline_args(opts))
    pipe.build()
    return pipe


def build_folder_pipeline(root: str, opts: PipelineOptions, train: bool, rank: int, world_size: int) -> Pipeline:
    pipe = _folder_pipeline(root, opts, train, rank, world_size, **_pipeline_args(opts))
    pipe.build()
    return pipe
