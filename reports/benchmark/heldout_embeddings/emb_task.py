"""A two-tower recommender on synthetic implicit feedback, for checking autowarm on
embedding-heavy models where most embedding rows get no gradient in a given step.

`autowarm bench grid|eval --tasks /tmp/emb_check/emb_task.py:task` loads ``task`` from this
file (in every worker process), builds a fresh model per run with ``make_model(seed)`` and
scores it on ``VAL``. Data come from a hidden rank-8 ground truth (user and item factors plus
an item bias, fixed generator): an interaction draws its user with a mild skew and its item
from a Zipf law (exponent 1.1 over a random ranking of the 5,000 items), so a batch of 256
touches about 3% of the item rows and 12% of the user rows; its label is a Bernoulli draw
of the true click probability (a logistic target). Deterministic in the seed, nothing
downloaded.

The model: user and item ``nn.Embedding`` tables (2,000 x 32 and 5,000 x 32, default dense
gradients, rows initialised N(0, 0.1^2) as recommenders usually do), a score that is the dot
product of the two rows plus a small MLP (64 -> 64 -> 1) on their concatenation, binary
cross-entropy with logits.
"""

from __future__ import annotations

import torch
from torch import nn

import autowarm

N_USERS, N_ITEMS, DIM, RANK = 2000, 5000, 32, 8
BATCH, TRAIN_BATCHES, VAL_BATCHES, VAL_BATCH = 256, 2000, 8, 1024
ZIPF_ITEMS, ZIPF_USERS = 1.1, 0.5
TOTAL_STEPS = 2000


def _truth() -> tuple[torch.Tensor, ...]:
    """The hidden ground truth: factors, item bias and the sampling laws (fixed seed)."""
    gen = torch.Generator().manual_seed(7)
    users = torch.randn(N_USERS, RANK, generator=gen)
    items = torch.randn(N_ITEMS, RANK, generator=gen)
    item_bias = 0.5 * torch.randn(N_ITEMS, generator=gen) - 0.3
    item_rank = torch.randperm(N_ITEMS, generator=gen)  # which item is the k-th most popular
    user_rank = torch.randperm(N_USERS, generator=gen)
    item_p = torch.empty(N_ITEMS)
    item_p[item_rank] = (torch.arange(N_ITEMS) + 1.0) ** -ZIPF_ITEMS
    user_p = torch.empty(N_USERS)
    user_p[user_rank] = (torch.arange(N_USERS) + 1.0) ** -ZIPF_USERS
    return users, items, item_bias, item_p / item_p.sum(), user_p / user_p.sum()


_USERS, _ITEMS, _ITEM_BIAS, _ITEM_P, _USER_P = _truth()


def _interactions(seed: int, n_batches: int, batch: int) -> list[tuple[torch.Tensor, ...]]:
    """Batches of (user, item, label) with a Bernoulli label of the true click probability."""
    gen = torch.Generator().manual_seed(seed)
    n = n_batches * batch
    u = torch.multinomial(_USER_P, n, replacement=True, generator=gen)
    i = torch.multinomial(_ITEM_P, n, replacement=True, generator=gen)
    logit = 2.0 * (_USERS[u] * _ITEMS[i]).sum(-1) / RANK**0.5 + _ITEM_BIAS[i]
    y = torch.bernoulli(torch.sigmoid(logit), generator=gen)
    return [(u[k : k + batch], i[k : k + batch], y[k : k + batch]) for k in range(0, n, batch)]


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(N_USERS, DIM)
        self.item = nn.Embedding(N_ITEMS, DIM)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.mlp = nn.Sequential(nn.Linear(2 * DIM, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u, v = self.user(users), self.item(items)
        return (u * v).sum(-1) + self.mlp(torch.cat([u, v], -1)).squeeze(-1)


def make_model(seed: int) -> nn.Module:
    return TwoTower()


def bce_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    users, items, labels = batch
    return nn.functional.binary_cross_entropy_with_logits(model(users, items), labels)


def train_data(seed: int) -> list[tuple[torch.Tensor, ...]]:
    return _interactions(1000 + seed, TRAIN_BATCHES, BATCH)


VAL = _interactions(999_999, VAL_BATCHES, VAL_BATCH)

task = autowarm.Task(
    make_model=make_model,
    train_data=train_data,
    loss_fn=bce_loss,
    val_data=VAL,
    total_steps=TOTAL_STEPS,
    optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.0},
)
