"""autowarm: measure the learning-rate warmup length and peak LR for a PyTorch run.

The public surface is this module's ``__all__``; implementation lives in private modules.
"""

from __future__ import annotations

from autowarm._shapes import Decay
from autowarm.schedules import ScheduleConfig, TransformersExportError

__version__ = "0.1.0"

__all__ = [
    "Decay",
    "ScheduleConfig",
    "TransformersExportError",
    "__version__",
]
