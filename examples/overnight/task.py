"""The task an overnight study repeats: a small character-level transformer LM on generated text.

`autowarm tune examples/overnight/task.py:task` loads ``task`` from this file (in every worker
process), builds a fresh model per trial with ``make_model(seed)`` and scores it on ``VAL``.
Replace the model, the data and ``TOTAL_STEPS`` with your own; keep them deterministic in the
seed, so every trial of the study trains the same way.

``AUTOWARM_EXAMPLE_TINY=1`` shrinks everything so the test suite runs the example in seconds.
"""

from __future__ import annotations

import os

import torch
from torch import nn

import autowarm

TINY = bool(os.environ.get("AUTOWARM_EXAMPLE_TINY"))
VOCAB, CONTEXT, BATCH = 24, 32, 16
WIDTH = 32 if TINY else 64
TOTAL_STEPS = 120 if TINY else 1500


def _text(seed: int, n_batches: int) -> list[torch.Tensor]:
    """Sequences from a fixed random bigram table: learnable, nothing downloaded."""
    table = torch.softmax(
        2.5 * torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(7)), -1
    )
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        tokens = torch.empty(BATCH, CONTEXT + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(VOCAB, (BATCH,), generator=gen)
        for t in range(CONTEXT):
            tokens[:, t + 1] = torch.multinomial(table[tokens[:, t]], 1, generator=gen).squeeze(1)
        batches.append(tokens)
    return batches


class CharLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(0.02 * torch.randn(CONTEXT, WIDTH))
        layer = nn.TransformerEncoderLayer(WIDTH, 4, 4 * WIDTH, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 1 if TINY else 2, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.body(h, mask=self.mask, is_causal=True))


def make_model(seed: int) -> nn.Module:
    return CharLM()


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def train_data(seed: int) -> list[torch.Tensor]:
    return _text(1000 + seed, 64 if TINY else 256)


VAL = _text(999_999, 4 if TINY else 16)

task = autowarm.Task(
    make_model=make_model,
    train_data=train_data,
    loss_fn=lm_loss,
    val_data=VAL,
    total_steps=TOTAL_STEPS,
    optimizer_kwargs={"betas": (0.9, 0.98), "weight_decay": 0.01},
)
