"""The loader layer: the ``Batch`` contract, the rank plan, the presets, and the loaders that follow them
(torchvision DataLoader, DALI, synthetic).

Names are imported on first use: ``loaders.plan`` needs only numpy (DALI's source workers import it),
the torch loader needs torchvision, the DALI loader needs DALI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy exports below, for the type checker; at run time __getattr__ imports them
    from .batch import Batch as Batch, BatchLoader as BatchLoader
    from .dali_loader import DALILoader as DALILoader, make_dali_loader as make_dali_loader
    from .plan import EpochOrder as EpochOrder, RankPlan as RankPlan
    from .presets import TrainPreset as TrainPreset, ValPreset as ValPreset
    from .synthetic import SyntheticLoader as SyntheticLoader
    from .torch_loader import TorchLoader as TorchLoader, make_torch_loader as make_torch_loader

_LAZY = {
    "Batch": ".batch",
    "BatchLoader": ".batch",
    "DALILoader": ".dali_loader",
    "make_dali_loader": ".dali_loader",
    "EpochOrder": ".plan",
    "RankPlan": ".plan",
    "TrainPreset": ".presets",
    "ValPreset": ".presets",
    "SyntheticLoader": ".synthetic",
    "TorchLoader": ".torch_loader",
    "make_torch_loader": ".torch_loader",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loaders' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
