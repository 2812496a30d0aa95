"""Fine-tuning a pretrained network on a small set, for measuring what the probe cannot see:
it scores the training loss, and on a small set the training loss rewards memorising.

`autowarm bench grid|eval --tasks finetune_task.py:task` loads ``task`` from this file (in every
worker process). ``make_model(seed)`` returns a copy of one pretrained network (pretrained once
per process, the same in every process: its seed is fixed): an MLP trained on 40,000 examples
of a source task. The run fine-tunes it on 2,000 examples of a related target task (the same
inputs, labels from a teacher whose weights moved a little from the source's, 10% of the labels
replaced at random) for 2,000 steps of batch 32, 32 passes over the set (a shuffling
``DataLoader`` of 62 batches), and is scored on 4,096 fresh examples of the target.
Deterministic in the seed, nothing downloaded.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autowarm

DIM, HIDDEN, CLASSES, BATCH = 32, 256, 8, 32
TRAIN_EXAMPLES, TOTAL_STEPS = 2000, 2000
LABEL_NOISE, SHIFT = 0.1, 0.6


def _teacher(shift: float) -> nn.Module:
    gen = torch.Generator().manual_seed(5)
    first, second = torch.randn(64, DIM, generator=gen), torch.randn(CLASSES, 64, generator=gen)
    moved = torch.Generator().manual_seed(6)
    first = first + shift * torch.randn(first.shape, generator=moved)
    second = second + shift * torch.randn(second.shape, generator=moved)
    net = nn.Sequential(nn.Linear(DIM, 64, bias=False), nn.Tanh(), nn.Linear(64, CLASSES))
    with torch.no_grad():
        net[0].weight.copy_(first / DIM**0.5)
        net[2].weight.copy_(2.0 * second / 64**0.5)
        net[2].bias.zero_()
    return net


SOURCE, TARGET = _teacher(0.0), _teacher(SHIFT)


def _examples(teacher: nn.Module, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=gen)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    flip = torch.rand(n, generator=gen) < LABEL_NOISE
    return x, torch.where(flip, torch.randint(CLASSES, (n,), generator=gen), y)


def _batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x) - BATCH + 1, BATCH)]


def _student() -> nn.Module:
    return nn.Sequential(
        nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
        nn.Linear(HIDDEN, CLASSES),
    )  # fmt: skip


_PRETRAINED: list[nn.Module] = []


def _pretrained() -> nn.Module:
    """The source task's network: 2 passes over 40,000 examples, AdamW 1e-3 (fixed seed)."""
    if not _PRETRAINED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = _student()
            x, y = _examples(SOURCE, 123, 40_000)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
            for _ in range(2):
                for xb, yb in _batches(x, y):
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(xb), yb).backward()
                    opt.step()
        _PRETRAINED.append(net)
    return _PRETRAINED[0]


def make_model(seed: int) -> nn.Module:
    return copy.deepcopy(_pretrained())


def train_data(seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    # one fixed small set per seed, reshuffled each pass, as a user's DataLoader would be
    x, y = _examples(TARGET, 1000 + seed, TRAIN_EXAMPLES)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), BATCH, shuffle=True, drop_last=True, generator=gen)


VAL = _batches(*_examples(TARGET, 999_999, 4096))

task = autowarm.Task(
    make_model=make_model,
    train_data=train_data,
    criterion=nn.functional.cross_entropy,
    val_data=VAL,
    total_steps=TOTAL_STEPS,
    optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.01},
)
