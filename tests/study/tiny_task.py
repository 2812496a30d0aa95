"""A tiny regression task for the study tests: trains in milliseconds per step.

Environment knobs (read at import, so worker processes see them too):
``TINY_TASK_SLEEP`` seconds to sleep in every loss call (to make trials slow enough to signal),
``TINY_TASK_NAN_ABOVE`` an LR above which the loss becomes NaN,
``TINY_TASK_RAISE`` makes every training loss raise.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

import autowarm

SLEEP = float(os.environ.get("TINY_TASK_SLEEP", "0"))
NAN_ABOVE = float(os.environ.get("TINY_TASK_NAN_ABOVE", "inf"))
RAISE = bool(os.environ.get("TINY_TASK_RAISE"))

_g = torch.Generator().manual_seed(0)
_X = torch.randn(384, 8, generator=_g)
_Y = _X @ torch.randn(8, 1, generator=_g) + 0.1 * torch.randn(384, 1, generator=_g)
BATCHES = [(_X[i : i + 32], _Y[i : i + 32]) for i in range(0, 320, 32)]
VAL = [(_X[320:], _Y[320:])]


def make_model(seed: int) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


class _Loss:
    """MSE, with the test knobs; picklable."""

    def __init__(self) -> None:
        self.optimizer_lr: float | None = None

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if SLEEP and model.training:
            time.sleep(SLEEP)
        if RAISE and model.training:
            raise RuntimeError("the task's loss is broken on purpose")
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        # with NAN_ABOVE set, a weight far from the init stands in for "LR too high"
        if model.training and float(model[0].weight.detach().abs().max()) > NAN_ABOVE:
            return loss * float("nan")
        return loss


task = autowarm.Task(
    make_model=make_model,
    train_data=BATCHES,
    loss_fn=_Loss(),
    val_data=VAL,
    total_steps=200,
)

not_a_task = 3
