"""A small character-level LSTM LM on generated text, for checking autowarm on recurrent nets.

`autowarm bench grid|eval --tasks /tmp/lstm_check/lstm_task.py:task` loads ``task`` from this
file (in every worker process), builds a fresh model per run with ``make_model(seed)`` and
scores it on ``VAL``. Data come from a fixed random trigram table: deterministic in the seed,
nothing downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

import autowarm

VOCAB, CONTEXT, BATCH = 24, 48, 32
EMBED, HIDDEN, LAYERS = 32, 64, 2
TOTAL_STEPS = 2000


def _text(seed: int, n_batches: int) -> list[torch.Tensor]:
    """Sequences from a fixed random trigram table: learnable, nothing downloaded."""
    table = torch.softmax(
        2.5 * torch.randn(VOCAB * VOCAB, VOCAB, generator=torch.Generator().manual_seed(7)), -1
    )
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        tokens = torch.empty(BATCH, CONTEXT + 1, dtype=torch.long)
        tokens[:, :2] = torch.randint(VOCAB, (BATCH, 2), generator=gen)
        for t in range(1, CONTEXT):
            context = tokens[:, t - 1] * VOCAB + tokens[:, t]
            tokens[:, t + 1] = torch.multinomial(table[context], 1, generator=gen).squeeze(1)
        batches.append(tokens)
    return batches


class CharLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(tokens))
        return self.head(h)


def make_model(seed: int) -> nn.Module:
    return CharLSTM()


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def train_data(seed: int) -> list[torch.Tensor]:
    return _text(1000 + seed, 256)


VAL = _text(999_999, 16)

task = autowarm.Task(
    make_model=make_model,
    train_data=train_data,
    loss_fn=lm_loss,
    val_data=VAL,
    total_steps=TOTAL_STEPS,
    optimizer_kwargs={"betas": (0.9, 0.999), "weight_decay": 0.01},
)
