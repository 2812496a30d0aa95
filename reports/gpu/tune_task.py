"""The overnight example's task (``examples/overnight/task.py``) with its trials on a GPU.

For the device check in ``run.sh``: ``autowarm tune reports/gpu/tune_task.py:task --workers 2``
runs the study's trials (and the probe) on ``cuda``, in spawned worker processes, each loading
this file again. ``CHECK_DEVICE`` (default ``cuda``) and ``CHECK_PRECISION`` (default
``32-true``) choose where and how; ``AUTOWARM_EXAMPLE_TINY=1`` shrinks the task as it does the
example's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

_spec = importlib.util.spec_from_file_location(
    "autowarm_overnight_example",
    Path(__file__).resolve().parents[2] / "examples/overnight/task.py",
)
assert _spec is not None and _spec.loader is not None
_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example)

DEVICE = os.environ.get("CHECK_DEVICE", "cuda")
PRECISION = os.environ.get("CHECK_PRECISION", "32-true")


def loss_on_device(model: Any, batch: Any) -> Any:
    """The example's loss, refusing a batch that is not where the trials should train."""
    if batch.device.type != torch.device(DEVICE).type:
        raise RuntimeError(f"a batch on {batch.device}, not on {DEVICE}: the task ran elsewhere")
    return _example.lm_loss(model, batch)


task = dataclasses.replace(
    _example.task,
    loss_fn=loss_on_device,
    device=DEVICE,
    precision=PRECISION,
    name=f"overnight-example-{DEVICE}-{PRECISION}",
    source=None,
)
