"""autowarm: measure the learning-rate warmup length and peak LR for a PyTorch run.

The public surface is this module's ``__all__``; implementation lives in private modules.

Example:
    >>> import autowarm  # doctest: +SKIP
    >>> s = autowarm.suggest(model, loader, total_steps=20_000)  # doctest: +SKIP
    >>> scheduler = s.schedule.lambda_lr(optimizer)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autowarm._shapes import Decay, WsdShape
from autowarm.schedules import ScheduleConfig, TransformersExportError

if TYPE_CHECKING:
    from autowarm._suggest import ProbeDivergedError, Suggestion, suggest
    from autowarm.reporting import Report, report
    from autowarm.study._space import SearchSpace
    from autowarm.study._task import Task, load_task
    from autowarm.study._tune import NoFinishedTrialError, TuneResult, tune

__version__ = "0.1.0"

# torch and pandas load on first use of these names, so `autowarm --version` and
# ScheduleConfig work without paying for them.
_LAZY = {
    "ProbeDivergedError": "autowarm._suggest",
    "Suggestion": "autowarm._suggest",
    "suggest": "autowarm._suggest",
    "NoFinishedTrialError": "autowarm.study._tune",
    "SearchSpace": "autowarm.study._space",
    "Task": "autowarm.study._task",
    "load_task": "autowarm.study._task",
    "TuneResult": "autowarm.study._tune",
    "tune": "autowarm.study._tune",
    "Report": "autowarm.reporting",
    "report": "autowarm.reporting",
}


if not TYPE_CHECKING:
    # Hidden from type checkers, which see the real names in the imports above: a module
    # __getattr__ would make them accept any attribute (autowarm.sugest) as Any.

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            import importlib

            return getattr(importlib.import_module(_LAZY[name]), name)
        raise AttributeError(f"module 'autowarm' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public names, the lazy ones too (so completion lists them before their first use),
    # and the modules already imported; not this file's own imports (Any, TYPE_CHECKING)
    modules = {k for k, v in globals().items() if type(v).__name__ == "module"}
    return sorted(set(__all__) | modules | {"__version__"})


__all__ = [
    "Decay",
    "NoFinishedTrialError",
    "ProbeDivergedError",
    "Report",
    "ScheduleConfig",
    "SearchSpace",
    "Suggestion",
    "Task",
    "TransformersExportError",
    "TuneResult",
    "WsdShape",
    "__version__",
    "load_task",
    "report",
    "suggest",
    "tune",
]
