"""A small pre-LN vision transformer on generated images, for checking autowarm on a model
family the probe was never tuned on, with the betas and weight decay ViT recipes use.

`autowarm bench grid|eval --tasks vit_task.py:task` loads ``task`` from this file (in every
worker process), builds a fresh model per run with ``make_model(seed)`` and scores it on
``VAL``. Images are generated: ten classes, each a fixed random smooth pattern, drawn at a
random shift with pixel noise, and 10% of the labels replaced at random (so the loss has a
floor above 0). Deterministic in the seed, nothing downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

import autowarm

SIDE, PATCH, CLASSES, BATCH = 16, 4, 10, 64
DIM, HEADS, LAYERS, MLP = 64, 4, 4, 128
TOTAL_STEPS = 2000
LABEL_NOISE, PIXEL_NOISE = 0.1, 1.0


def _prototypes() -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    raw = torch.randn(CLASSES, 1, SIDE + 8, SIDE + 8, generator=gen)
    smooth = nn.functional.avg_pool2d(raw, 5, stride=1, padding=2)  # blobs, not pixel noise
    return smooth / smooth.std(dim=(1, 2, 3), keepdim=True)


PROTOTYPES = _prototypes()


def _images(seed: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        labels = torch.randint(CLASSES, (BATCH,), generator=gen)
        dx, dy = torch.randint(9, (2, BATCH), generator=gen)
        x = torch.stack(
            [
                PROTOTYPES[c, :, i : i + SIDE, j : j + SIDE]
                for c, i, j in zip(labels.tolist(), dx.tolist(), dy.tolist(), strict=True)
            ]
        )
        x = x + PIXEL_NOISE * torch.randn(x.shape, generator=gen)
        flip = torch.rand(BATCH, generator=gen) < LABEL_NOISE
        labels = torch.where(flip, torch.randint(CLASSES, (BATCH,), generator=gen), labels)
        batches.append((x, labels))
    return batches


class TinyViT(nn.Module):
    """Patch embedding, learned positions, pre-LN encoder blocks, mean pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        n = (SIDE // PATCH) ** 2
        self.patch = nn.Conv2d(1, DIM, PATCH, stride=PATCH)
        self.pos = nn.Parameter(0.02 * torch.randn(1, n, DIM))
        layer = nn.TransformerEncoderLayer(
            DIM, HEADS, MLP, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.encoder(tokens)).mean(1))


def make_model(seed: int) -> nn.Module:
    return TinyViT()


def train_data(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return _images(1000 + seed, 256)


VAL = _images(999_999, 16)

task = autowarm.Task(
    make_model=make_model,
    train_data=train_data,
    criterion=nn.functional.cross_entropy,
    val_data=VAL,
    total_steps=TOTAL_STEPS,
    optimizer_kwargs={"betas": (0.9, 0.98), "weight_decay": 0.05},
)
