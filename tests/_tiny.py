"""Tiny models and data shared by the probe's test files, and their one-thread fixture.

A test module opts in to the fixture by importing it (``from tests._tiny import one_thread``):
pytest then applies it, module-scoped, to that module's tests only.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def mlp(seed: int = 0, hidden: int = 16) -> nn.Sequential:
    """8 -> ``hidden`` -> ReLU -> 2, initialised from torch's global RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))
