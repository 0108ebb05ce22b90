"""The batches of a DALI loader whose pipeline failed, decoded on the CPU in the loader's own process.

After a decoding error DALI 2.4 may crash a later pipeline of the same process (``dali_pipeline.decode_check``),
so a ``DALILoader`` never builds a second one. It goes on with ``CpuFallback``: the samples the pipeline
would have delivered (the same plan, the same bad-record replacements), each decoded by Pillow and given the
torch loader's transform (``torch_loader``: the same ``train_view`` crop box and flip, resized with
torchvision's antialiased bilinear, so images agree with DALI's within rounding), then normalised on the
loader's device in its dtype and memory format. It is slow (one Python thread), and meant to carry the
epoch to the trainer's next agreement point, where the ranks save and continue in a fresh process.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch
from torch.utils.data import default_collate

from lmdb_io import ImageFolderLMDB
from lmdb_io.reading.plan import RankPlan
from lmdb_io.reading.presets import Preset
from lmdb_io.reading.resolution import ResolutionSchedule

from .batch import Batch
from .normalize import DeviceNormalizer
from .torch_loader import PlannedItems


class CpuFallback:
    """``batches(epoch, start)``: ``epoch``'s batches from position ``start`` of the rank's order.

    ``known_bad`` is the caller's set of dataset indices found bad (shared, not copied: what the caller
    learns later counts); ``on_bad(index, why)`` hears of each record Pillow rejects here (it is then in
    ``known_bad`` too).
    """

    def __init__(
        self,
        db_path: str,
        plan: RankPlan,
        preset: Preset,
        resolution: ResolutionSchedule | None,
        *,
        known_bad: set[int],
        on_bad: Callable[[int, str], None],
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        verify: bool = True,
    ) -> None:
        self.plan, self.on_bad, self.device = plan, on_bad, device
        self.items = PlannedItems(ImageFolderLMDB(db_path, verify=verify), plan, preset, resolution)
        self.items.known_bad = known_bad
        self.normalize = DeviceNormalizer(preset.mean, preset.std, device, dtype=dtype, channels_last=channels_last)

    def batches(self, epoch: int, start: int) -> Generator[Batch, None, None]:
        order = self.plan.for_epoch(epoch)
        size = self.plan.batch_size
        for first in range(start, len(order), size):
            samples = []
            for position in range(first, min(first + size, len(order))):
                image, label, delivered, replaced, bad = self.items[(epoch, position)]
                for found, why in bad:  # already in known_bad (``first_good`` adds them)
                    self.on_bad(found, why)
                samples.append((image, label, delivered, replaced))
            images, labels, indices, padding = default_collate(samples)
            yield Batch(self.normalize(images), labels.to(self.device), indices, padding)
