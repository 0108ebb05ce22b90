"""Train and validation pipelines as pure functions of a source, options and a preset.

The graph is the same on a GPU and on the CPU: with a device id the decoder runs ``mixed`` (nvJPEG,
hardware decoder where present) and the rest on the GPU; with ``device_id=None`` every operator is a
CPU one. What the graphs do is ``lmdb_io.reading.presets``' definition, the one the torchvision loader follows:
train decodes the crop window the source hands over (``lmdb_io.reading.augment``: the same window and flip
the torch loader uses; decoders' ROI decoding), resizes it to the crop size, flips where the source says and
normalizes (over DALI's file reader, which hands no dataset index, the decoder draws the random-resized crop
and the flip is a coin flip); validation resizes the shorter side and center crops with torchvision's integer arithmetic
(``val_geometry``), then normalizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from lmdb_io.reading.presets import Preset, TrainPreset, ValPreset
from lmdb_io.reading.workers import stop_signals_blocked

from . import fused_resize, workers
from .compat import no_exif_rotation, supported
from .val_geometry import resize_and_center_crop

if TYPE_CHECKING:
    from .source import PlanSource

OUTPUT_NAMES = ("images", "labels", "indices", "padding")


@dataclass(frozen=True)
class PipelineOptions:
    """How a pipeline runs (what it computes is the preset's); defaults suit training on one GPU."""

    batch_size: int
    device_id: int | None = None  # None: CPU operators only
    num_threads: int = 4  # DALI's own CPU threads
    py_workers: int = 0  # Python processes running the source (0: in the pipeline's thread)
    prefetch: int = 2  # batches queued ahead, in the pipeline and in the parallel source
    fp16_output: bool = False  # float16 images instead of float32 (DALI has no bfloat16: bf16 AMP takes these)
    channels_last: bool = False  # NHWC instead of NCHW
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the A100/H100 hardware decoder (train)
    # nvJPEG's buffers sized up front for ImageNet's largest image, as DALI's ResNet-50 example sizes them,
    # so they never regrow (a device synchronisation) as larger images arrive: train's decoder on a GPU,
    # as in the example (validation keeps DALI's defaults: fewer resources for a pipeline that mostly idles)
    device_memory_padding: int = 211025920  # bytes per decoder thread
    host_memory_padding: int = 140544512  # bytes, pinned, twice per decoder thread
    preallocate_width_hint: int = 5980  # the hardware decoder's
    preallocate_height_hint: int = 6430
    seed: int = 0
    # CPU graphs: resize, flip and normalize in one operator (``fused_resize``) where it builds, else DALI's
    fused_cpu_resize: bool = True
    # what the train graph does, decided once, as the options are made (``uses_fused_resize_for``)
    uses_fused_resize: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses_fused_resize", uses_fused_resize_for(self.device_id, self.fused_cpu_resize))

    @property
    def on_gpu(self) -> bool:
        return self.device_id is not None


def uses_fused_resize_for(device_id: int | None, wanted: bool) -> bool:
    """Whether a train graph resizes with ``fused_resize``'s operator: on the CPU only, when ``wanted``, and
    once the operator has loaded (built on first use; where it cannot be, one warning says why)."""
    return device_id is None and wanted and fused_resize.available()


def _read(source: PlanSource, opts: PipelineOptions) -> dict[str, Any]:
    """The source's outputs by name (``PlanSource.output_names``): the encoded image, label, index and
    padding; where the source decides the augmentation, each sample's crop window (``anchor``, ``shape``)
    and ``mirror``; where it follows a resolution schedule, the crop ``size`` of each sample's epoch."""
    parallel = opts.py_workers > 0
    extra: dict[str, Any] = {"prefetch_queue_depth": opts.prefetch} if parallel else {}
    names = source.output_names
    outputs = fn.external_source(source=source, num_outputs=len(names), batch=False, parallel=parallel, **extra)
    return dict(zip(names, outputs, strict=True))


def _decoder_args(schema: str, opts: PipelineOptions, train: bool = True) -> dict[str, Any]:
    """The decoder's arguments; on a GPU, train's nvJPEG buffers (``PipelineOptions``), and validation's
    chroma upsampled as libjpeg-turbo and PIL do (``jpeg_fancy_upsampling``, off by default: GPU pixels
    would differ from torchvision's), on nvJPEG's CUDA path (``hw_decoder_load=0``): the hardware
    decoder's upsampling is not documented to follow that flag. Arguments this DALI lacks are dropped."""
    args: dict[str, Any] = {"output_type": types.RGB, **no_exif_rotation(schema)}
    if not opts.on_gpu:
        return args
    if train:
        gpu = dict(
            hw_decoder_load=opts.hw_decoder_load,
            device_memory_padding=opts.device_memory_padding,
            host_memory_padding=opts.host_memory_padding,
            preallocate_width_hint=opts.preallocate_width_hint,
            preallocate_height_hint=opts.preallocate_height_hint,
        )
    else:
        gpu = dict(hw_decoder_load=0.0, jpeg_fancy_upsampling=True)
    return args | supported(schema, **gpu)


def _normalization(preset: Preset, opts: PipelineOptions) -> dict[str, Any]:
    """What the output is: type, layout, and the preset's mean and std, which are on ToTensor's 0-1 scale
    while DALI's pixels are 0-255."""
    return dict(
        dtype=types.FLOAT16 if opts.fp16_output else types.FLOAT,
        output_layout="HWC" if opts.channels_last else "CHW",
        mean=[255 * m for m in preset.mean],
        std=[255 * s for s in preset.std],
    )


def _normalize(images: Any, preset: Preset, opts: PipelineOptions, mirror: Any = None) -> Any:
    extra = {"mirror": mirror} if mirror is not None else {}
    return fn.crop_mirror_normalize(images, **_normalization(preset, opts), **extra)


def _outputs(images: Any, labels: Any, indices: Any, padding: Any, opts: PipelineOptions) -> tuple:
    return images, (labels.gpu() if opts.on_gpu else labels), indices, padding


Window = tuple[Any, Any, Any]  # per-sample (anchor, shape, mirror) DataNodes from the source


def train_graph(
    encoded: Any, preset: TrainPreset, opts: PipelineOptions, size: Any = None, window: Window | None = None
) -> Any:
    """Decode the crop window, resize to the crop size, flip, normalize.

    ``window``: the source's per-sample crop window (anchor (x, y), shape (width, height), in pixels) and
    flip (``lmdb_io.reading.augment``); without one (DALI's file reader) the decoder draws a random-resized
    crop and a coin flips. ``size``: per-sample crop sizes (a DataNode: progressive resizing,
    ``lmdb_io.reading.resolution``) instead of the preset's fixed ``crop``; resize takes them as argument
    inputs, so no rebuild when they change."""
    return train_stages(encoded, preset, opts, size, window)[-1][1]


TRAIN_STAGES = ("crop decode", "resize", "flip + normalize")  # with DALI's operators
FUSED_TRAIN_STAGES = ("crop decode", "fused resize + flip + normalize")  # PipelineOptions.uses_fused_resize


def train_stages(
    encoded: Any, preset: TrainPreset, opts: PipelineOptions, size: Any = None, window: Window | None = None
) -> list[tuple[str, Any]]:
    """The train graph's stages in order, each with its output (``TRAIN_STAGES``' names, or
    ``FUSED_TRAIN_STAGES``' with the fused CPU operator): the graph is the last one's; ``bench.stages`` cuts
    the graph after each to see where the time goes."""
    crop = preset.crop if size is None else size
    device = "mixed" if opts.on_gpu else "cpu"
    if window is not None:  # ROI decoding of the source's window: libjpeg-turbo's, nvJPEG's (hardware too)
        anchor, shape, mirror = window
        decoded = fn.decoders.image_slice(
            encoded,
            anchor,
            shape,
            device=device,
            normalized_anchor=False,
            normalized_shape=False,
            **_decoder_args("decoders__ImageSlice", opts),
        )
    else:
        decoded = fn.decoders.image_random_crop(
            encoded,
            device=device,
            random_area=list(preset.area),
            random_aspect_ratio=list(preset.aspect_ratio),
            num_attempts=preset.attempts,
            **_decoder_args("decoders__ImageRandomCrop", opts),
        )
        mirror = fn.random.coin_flip(probability=preset.flip_probability)
    if opts.uses_fused_resize:
        side = float(crop) if isinstance(crop, int) else crop  # the operator's size is a float, as resize's
        fused = fn.lmdb_dali_train.resize_flip_normalize(
            decoded, size=side, mirror=mirror, **_normalization(preset, opts)
        )
        return list(zip(FUSED_TRAIN_STAGES, (decoded, fused), strict=True))
    resized = fn.resize(decoded, resize_x=crop, resize_y=crop, interp_type=types.INTERP_LINEAR, antialias=True)
    normalized = _normalize(resized, preset, opts, mirror=mirror)
    return list(zip(TRAIN_STAGES, (decoded, resized, normalized), strict=True))


def full_decode(encoded: Any, opts: PipelineOptions, train: bool = True) -> Any:
    """The whole frame decoded (validation's first step; for training, FFCV's way: decode all, then crop)."""
    schema = "decoders__Image"
    return fn.decoders.image(encoded, device="mixed" if opts.on_gpu else "cpu", **_decoder_args(schema, opts, train))


def val_graph(encoded: Any, preset: ValPreset, opts: PipelineOptions) -> Any:
    """Decode, resize the shorter side and center crop as torchvision does, normalize."""
    images = full_decode(encoded, opts, train=False)
    images = resize_and_center_crop(
        images, encoded, resize=preset.resize, crop=preset.crop, device="gpu" if opts.on_gpu else "cpu"
    )
    return _normalize(images, preset, opts)


def _graph(encoded: Any, preset: Preset, opts: PipelineOptions, size: Any = None, window: Window | None = None) -> Any:
    if isinstance(preset, TrainPreset):
        return train_graph(encoded, preset, opts, size, window)
    if size is not None or window is not None:
        raise ValueError("a resolution schedule and crop windows are for training; validation has its preset's")
    return val_graph(encoded, preset, opts)


@pipeline_def
def _source_pipeline(source: PlanSource, opts: PipelineOptions, preset: Preset) -> tuple:
    out = _read(source, opts)
    window = (out["anchor"], out["shape"], out["mirror"]) if "anchor" in out else None
    images = _graph(out["encoded"], preset, opts, out.get("size"), window)
    return _outputs(images, out["labels"], out["indices"], out["padding"], opts)


FILE_READER_NAME = "files"


@pipeline_def
def _folder_pipeline(root: str, opts: PipelineOptions, preset: Preset, rank: int, world_size: int) -> tuple:
    """An ImageFolder tree through DALI's file reader, sharded by global rank and padded, so every rank
    reads the same count. The reader gives no dataset index: ``indices`` is -1, ``padding`` 0."""
    encoded, labels = fn.readers.file(
        file_root=root,
        shard_id=rank,
        num_shards=world_size,
        random_shuffle=isinstance(preset, TrainPreset),
        pad_last_batch=True,
        seed=opts.seed,
        name=FILE_READER_NAME,
    )
    labels = fn.cast(labels, dtype=types.INT64)
    indices = fn.constant(idata=-1, dtype=types.INT64) * 1
    padding = fn.constant(idata=0, dtype=types.UINT8) * 1
    return _outputs(_graph(encoded, preset, opts), labels, indices, padding, opts)


def _pipeline_args(opts: PipelineOptions) -> dict[str, Any]:
    return dict(
        batch_size=opts.batch_size,
        num_threads=opts.num_threads,
        device_id=opts.device_id,
        seed=opts.seed,
        prefetch_queue_depth=opts.prefetch,
        py_num_workers=max(1, opts.py_workers),
        py_start_method="spawn",
        py_callback_pickler=workers,  # workers leave SIGINT/SIGTERM to the trainer
    )


def build_pipeline(source: PlanSource, opts: PipelineOptions, preset: Preset) -> Pipeline:
    """A built pipeline over a per-sample source. Python workers start with spawn: DALI cannot fork
    them once CUDA is initialised, and building a GPU pipeline initialises it. They start in ``build``,
    with SIGINT/SIGTERM blocked (``lmdb_io.reading.workers``): a signal to the process group is the trainer's."""
    pipe = _source_pipeline(source, opts, preset, **_pipeline_args(opts))
    with stop_signals_blocked(spawn=opts.py_workers > 0):
        pipe.build()
    return pipe


def build_folder_pipeline(root: str, opts: PipelineOptions, preset: Preset, rank: int, world_size: int) -> Pipeline:
    pipe = _folder_pipeline(root, opts, preset, rank, world_size, **_pipeline_args(opts))
    pipe.build()
    return pipe
