"""Tiny models and data shared by the probe's test files, and their one-thread fixture.

A test module opts in to the fixture by importing it (``from tests._tiny import one_thread``):
pytest then applies it, module-scoped, to that module's tests only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny models: one thread is faster and does not fight other processes for cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cls_batches(
    n_batches: int = 4, bs: int = 16, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A two-class problem on 8 features: ``n_batches`` batches of ``bs`` (inputs, labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * bs, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, n_batches * bs, bs)]


class ClsDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The examples of ``cls_batches(n_batches)`` as a map-style dataset, for loaders with
    workers; augmenting subclasses override ``__getitem__``."""

    def __init__(self, n_batches: int = 4) -> None:
        batches = cls_batches(n_batches=n_batches)
        self.x = torch.cat([b[0] for b in batches])
        self.y = torch.cat([b[1] for b in batches])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def mlp(seed: int = 0, hidden: int = 16) -> nn.Sequential:
    """8 -> ``hidden`` -> ReLU -> 2, initialised from torch's global RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))


class _Adaptive(torch.optim.Optimizer):
    """The loop of the test optimizers below: a step count per parameter, then ``_update``."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    st = self.state[p]
                    st["step"] = st.get("step", 0) + 1
                    self._update(p, st, group)

    def _update(self, p: torch.Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError


class PerTensorSecondMoment(_Adaptive):
    """NovoGrad-style Adam: one second moment per tensor (``exp_avg_sq`` is a scalar).

    A legitimate optimizer whose ``exp_avg_sq`` is not shaped like its parameter, so the probe
    cannot read it coordinate by coordinate.
    """

    def __init__(self, params: object, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99)):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": 1e-8})

    def _update(self, p: torch.Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
        b1, b2 = group["betas"]
        if "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros((), dtype=p.dtype)
        st["exp_avg_sq"].mul_(b2).add_((1 - b2) * p.grad.pow(2).sum())
        st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
        v_hat = st["exp_avg_sq"] / (1 - b2 ** st["step"])
        p.add_(st["exp_avg"] / (v_hat.sqrt() + group["eps"]), alpha=-group["lr"])


class DecayRateAdam(_Adaptive):
    """Adam whose param groups name beta2 ``decay_rate`` (no ``betas``), as Adafactor's do."""

    def __init__(self, params: object, lr: float = 1e-3, decay_rate: float = 0.99):
        super().__init__(params, {"lr": lr, "decay_rate": decay_rate, "eps": 1e-8})

    def _update(self, p: torch.Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
        b2 = group["decay_rate"]
        if "exp_avg_sq" not in st:
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        v_hat = st["exp_avg_sq"] / (1 - b2 ** st["step"])
        p.addcdiv_(p.grad, v_hat.sqrt().add_(group["eps"]), value=-group["lr"])
