"""Procedural data for the benchmark tasks: nothing is downloaded, everything comes from a seed.

Each generator draws a *chunk* of batches at once from a ``torch.Generator`` (vectorised, so the
cost per batch stays small next to a training step). :class:`SeededStream` turns a chunk maker
and a seed into a re-iterable of batches: every ``iter()`` starts the same sequence again, and
every batch is fresh (no batch repeats within a stream), so a run never sees the same example
twice and the final validation loss measures optimisation, not overfitting.

The "world" of a task (the Markov transition table, the teacher network) comes from a fixed
world seed, the same for every run; the run seed only picks which samples are drawn.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "GratingsChunks",
    "MarkovChunks",
    "SeededStream",
    "TeacherChunks",
    "fixed_batches",
    "markov_entropy_rate",
]

ChunkMaker = Callable[[torch.Generator, int], list[Any]]

_CHUNK_BATCHES = 64


@dataclass(frozen=True)
class SeededStream:
    """A re-iterable of ``n_batches`` batches drawn from ``make_chunk`` with a seeded generator.

    Args:
        make_chunk:
            ``make_chunk(generator, n) -> list of n batches``; must be picklable.
        seed:
            Seed of the ``torch.Generator``; the same seed gives the same batches.
        n_batches:
            Number of batches one pass yields.
    """

    make_chunk: ChunkMaker
    seed: int
    n_batches: int

    def __iter__(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed)
        left = self.n_batches
        while left > 0:
            n = min(_CHUNK_BATCHES, left)
            yield from self.make_chunk(generator, n)
            left -= n

    def __len__(self) -> int:
        return self.n_batches


def _split(tensor: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [tensor[i : i + size] for i in range(0, tensor.shape[0], size)]


def fixed_batches(make_chunk: ChunkMaker, seed: int, n_batches: int) -> list[Any]:
    """Draw ``n_batches`` batches once, e.g. a validation set."""
    return list(SeededStream(make_chunk, seed, n_batches))


# --- Markov-chain language ---------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _markov_cdf(
    vocab: int, order: int, branching: int, sigma: float, by_last: bool, world_seed: int
) -> torch.Tensor:
    # One row per context (the previous `order` tokens), with `branching` successors and
    # log-normal weights. With by_last, the *set* of successors depends on the last token only
    # (the weights on the whole context): a bigram model gets part of the way, quickly.
    # Otherwise each context has its own successors, and nothing below order 2 helps.
    # Stored as a cumulative table for inverse-CDF sampling.
    gen = torch.Generator().manual_seed(world_seed)
    n_ctx = vocab**order
    if by_last:
        succ = torch.rand(vocab, vocab, generator=gen).argsort(dim=1)[:, :branching]
        succ = succ.repeat(n_ctx // vocab, 1)  # context c has last token c % vocab
    else:
        succ = torch.rand(n_ctx, vocab, generator=gen).argsort(dim=1)[:, :branching]
    weights = torch.exp(sigma * torch.randn(n_ctx, branching, generator=gen, dtype=torch.float64))
    probs = torch.zeros(n_ctx, vocab, dtype=torch.float64)
    probs.scatter_(1, succ, weights / weights.sum(dim=1, keepdim=True))
    cdf = probs.cumsum(dim=1)
    cdf[:, -1] = 1.0 + 1e-9  # guard the last bin against rounding
    return cdf


def markov_entropy_rate(spec: MarkovChunks) -> float:
    """Average next-token entropy (nats) over contexts: a floor on the achievable loss.

    It averages uniformly over contexts, not over the chain's stationary distribution, so it is
    a guide, not an exact bound.
    """
    cdf = _markov_cdf(
        spec.vocab,
        spec.order,
        spec.branching,
        spec.sigma,
        spec.successors_by_last,
        spec.world_seed,
    )
    probs = torch.diff(cdf, dim=1, prepend=torch.zeros(cdf.shape[0], 1, dtype=cdf.dtype))
    probs = probs.clamp(min=0.0)
    ent = -(probs * torch.log(probs.clamp(min=1e-300))).sum(dim=1)
    return float(ent.mean())


@dataclass(frozen=True)
class MarkovChunks:
    """Token sequences from a random sparse Markov chain of the given order.

    Each next token depends on the previous ``order`` tokens. Which ``branching`` tokens can
    follow is set by the last token alone; how likely each is depends on the whole context
    (log-normal weights of spread ``sigma``). So a bigram model gets part of the way quickly,
    and the rest of the loss needs a look further back (attention).

    Args:
        vocab:
            Vocabulary size.
        order:
            How many previous tokens the next one depends on.
        branching:
            Possible successors of each token.
        sigma:
            Spread of the log-normal successor weights (larger: more peaked, more to gain
            from the earlier tokens).
        context:
            Tokens per training sequence (the model sees ``context`` inputs).
        batch_size:
            Sequences per batch.
        world_seed:
            Seed of the transition table (fixed per task).
        successors_by_last:
            Which tokens can follow depends on the last token only (``True``), or on the whole
            context (``False``: the bigram statistics are nearly flat, only a model that
            attends to the token before the last learns anything beyond unigrams).
        as_dict:
            Yield ``{"input_ids", "labels"}`` dicts (Hugging Face style, labels shifted by the
            model) instead of ``(inputs, targets)`` pairs shifted here.
    """

    vocab: int
    order: int
    branching: int
    sigma: float
    context: int
    batch_size: int
    world_seed: int
    successors_by_last: bool = True
    as_dict: bool = False

    def __call__(self, gen: torch.Generator, n: int) -> list[Any]:
        cdf = _markov_cdf(
            self.vocab,
            self.order,
            self.branching,
            self.sigma,
            self.successors_by_last,
            self.world_seed,
        ).float()
        rows = n * self.batch_size
        length = self.context + (0 if self.as_dict else 1)
        tokens = torch.empty(rows, length, dtype=torch.long)
        tokens[:, : self.order] = torch.randint(0, self.vocab, (rows, self.order), generator=gen)
        u = torch.rand(length, rows, 1, generator=gen)
        for t in range(self.order, length):
            ctx = torch.zeros(rows, dtype=torch.long)
            for k in range(self.order, 0, -1):
                ctx = ctx * self.vocab + tokens[:, t - k]
            nxt = torch.searchsorted(cdf[ctx], u[t])
            tokens[:, t] = nxt.squeeze(1).clamp_(max=self.vocab - 1)
        out: list[Any] = []
        for chunk in _split(tokens, self.batch_size):
            if self.as_dict:
                out.append({"input_ids": chunk, "labels": chunk})
            else:
                out.append((chunk[:, :-1], chunk[:, 1:]))
        return out


# --- teacher network (regression / soft classification) ----------------------------------------


@functools.lru_cache(maxsize=8)
def _teacher(
    kind: str, d_in: int, d_hidden: int, d_out: int, scale: float, world_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(world_seed)
    if kind == "linear":
        w1 = torch.randn(d_in, d_out, generator=gen) * (scale / math.sqrt(d_in))
        return w1, torch.empty(0)
    w1 = torch.randn(d_in, d_hidden, generator=gen) * (scale / math.sqrt(d_in))
    w2 = torch.randn(d_hidden, d_out, generator=gen) / math.sqrt(d_hidden)
    return w1, w2


@dataclass(frozen=True)
class TeacherChunks:
    """``(x, y)`` pairs with Gaussian inputs and targets from a fixed random teacher.

    ``kind="mlp"``: ``y = tanh(x W1) W2 + noise``, normalised to about unit variance
    (regression). ``kind="linear"``: class labels sampled from ``softmax(x W1)`` (soft
    classification: the Bayes loss is above zero, so the loss never runs out of signal).

    Args:
        kind:
            ``"mlp"`` or ``"linear"``.
        d_in:
            Input dimension.
        d_hidden:
            Teacher hidden width (``"mlp"`` only).
        d_out:
            Output dimension (``"mlp"``) or number of classes (``"linear"``).
        scale:
            Scale of the first teacher layer (sharper teacher for larger values).
        noise:
            Standard deviation of the label noise (``"mlp"`` only).
        batch_size:
            Examples per batch.
        world_seed:
            Seed of the teacher (fixed per task).
    """

    kind: str
    d_in: int
    d_hidden: int
    d_out: int
    scale: float
    noise: float
    batch_size: int
    world_seed: int

    def __call__(self, gen: torch.Generator, n: int) -> list[Any]:
        w1, w2 = _teacher(
            self.kind, self.d_in, self.d_hidden, self.d_out, self.scale, self.world_seed
        )
        x = torch.randn(n * self.batch_size, self.d_in, generator=gen)
        if self.kind == "linear":
            labels = torch.multinomial(torch.softmax(x @ w1, dim=1), 1, generator=gen)
            y: torch.Tensor = labels.squeeze(1)
        else:
            y = torch.tanh(x @ w1) @ w2
            y = y / _teacher_std(self) + self.noise * torch.randn(y.shape, generator=gen)
        return list(zip(_split(x, self.batch_size), _split(y, self.batch_size), strict=True))


@functools.lru_cache(maxsize=8)
def _teacher_std(spec: TeacherChunks) -> float:
    # Output scale of the teacher, from a fixed sample, so targets have about unit variance.
    w1, w2 = _teacher(spec.kind, spec.d_in, spec.d_hidden, spec.d_out, spec.scale, spec.world_seed)
    x = torch.randn(4096, spec.d_in, generator=torch.Generator().manual_seed(spec.world_seed + 1))
    return float((torch.tanh(x @ w1) @ w2).std())


# --- oriented gratings (image classification) --------------------------------------------------


@dataclass(frozen=True)
class GratingsChunks:
    """Noisy oriented sine gratings; the class is the orientation (``n_classes`` angles in 180°).

    Every image has a random spatial frequency, phase, contrast and a small orientation jitter,
    plus Gaussian pixel noise, so neighbouring orientations at low contrast are hard to tell
    apart and the Bayes loss is above zero.

    Args:
        size:
            Image height and width (one channel).
        n_classes:
            Number of orientations.
        noise:
            Pixel noise standard deviation.
        batch_size:
            Images per batch.
    """

    size: int
    n_classes: int
    noise: float
    batch_size: int

    def __call__(self, gen: torch.Generator, n: int) -> list[Any]:
        rows = n * self.batch_size
        labels = torch.randint(0, self.n_classes, (rows,), generator=gen)
        step = math.pi / self.n_classes
        jitter = (torch.rand(rows, generator=gen) - 0.5) * (0.5 * step)
        theta = labels.float() * step + jitter
        freq = 0.12 + 0.2 * torch.rand(rows, generator=gen)
        phase = 2 * math.pi * torch.rand(rows, generator=gen)
        contrast = 0.15 + 0.85 * torch.rand(rows, generator=gen)
        coords = torch.arange(self.size, dtype=torch.float32) - (self.size - 1) / 2
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        proj = xx[None] * cos + yy[None] * sin
        img = contrast[:, None, None] * torch.sin(
            2 * math.pi * freq[:, None, None] * proj + phase[:, None, None]
        )
        img = img + self.noise * torch.randn(img.shape, generator=gen)
        images = img.unsqueeze(1)
        return list(
            zip(_split(images, self.batch_size), _split(labels, self.batch_size), strict=True)
        )
