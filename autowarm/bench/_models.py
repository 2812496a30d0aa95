"""Tiny models for the benchmark tasks, sized so a 2,000-step run takes seconds on one core.

Every builder is a module-level function of plain numbers (bound with ``functools.partial`` in
the task registry) so tasks pickle into worker processes. None uses dropout: the benchmark
compares schedules, not regularisers, and a run must be a deterministic function of its seed.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PostLNBlock",
    "PostLNLM",
    "conv_net",
    "deep_mlp",
    "gpt2_lm",
    "linear_classifier",
    "lm_cross_entropy",
]


class PostLNBlock(nn.Module):
    """A post-LayerNorm transformer block (the original Transformer's layout).

    .. math::

        h \\leftarrow \\mathrm{LN}(h + \\mathrm{Attn}(h)), \\qquad
        h \\leftarrow \\mathrm{LN}(h + \\mathrm{MLP}(h))

    Normalising *after* the residual sum puts every layer's output on the residual path's
    scale, which makes post-LN transformers unstable at large learning rates unless they warm
    up (Xiong et al., 2020). Same maths as ``nn.TransformerEncoderLayer(norm_first=False)``
    with a causal mask and GELU, written out with ``scaled_dot_product_attention`` because it is
    about twice as fast on a CPU at this size.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        qkv = self.qkv(h).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        h = self.norm1(h + self.proj(att.transpose(1, 2).reshape(b, t, d)))
        out: torch.Tensor = self.norm2(h + self.fc2(F.gelu(self.fc1(h))))
        return out


class PostLNLM(nn.Module):
    """A causal post-LN transformer language model: token + learned position embeddings,
    ``n_layers`` :class:`PostLNBlock`, a linear head. Returns logits ``(batch, time, vocab)``."""

    def __init__(
        self, vocab: int, d_model: int, n_layers: int, n_heads: int, d_ff: int, context: int
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(context, d_model) * 0.02)
        self.blocks = nn.ModuleList(PostLNBlock(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        logits: torch.Tensor = self.head(h)
        return logits


def lm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy for ``(batch, time, vocab)`` logits."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def gpt2_lm(vocab: int, d_model: int, n_layers: int, n_heads: int, context: int) -> nn.Module:
    """A tiny ``transformers.GPT2LMHeadModel`` built from a config (nothing downloaded).

    Raises:
        ImportError: If transformers is not installed (``pip install 'autowarm[hf]'``).
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the hf_gpt2 benchmark task needs transformers: pip install 'autowarm[hf]'"
        ) from exc
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        n_inner=4 * d_model,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model: nn.Module = GPT2LMHeadModel(config)
    # what it uses anyway; silences transformers' "loss_type=None" notice
    object.__setattr__(model, "loss_type", "ForCausalLM")
    return model


def deep_mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    """A ``depth``-layer ReLU MLP with no normalisation, He-initialised, zero biases.

    He (Kaiming) initialisation keeps the forward signal's scale constant through the layers
    at the start; nothing keeps it there once training moves the weights, which is what makes
    deep unnormalised nets sensitive to large early steps.
    """
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        linear = nn.Linear(a, b)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_net(channels: int, n_classes: int, batch_norm: bool = True) -> nn.Sequential:
    """Three 3x3 conv layers with ReLU (the middle one strided), optionally BatchNorm after each,
    global average pooling and a linear classifier, for one-channel images. Without BatchNorm
    the convolutions are He-initialised with zero biases."""
    c = channels
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate([(1, c), (c, 2 * c), (2 * c, 2 * c)]):
        conv = nn.Conv2d(a, b, 3, padding=1, stride=2 if i == 1 else 1)
        if batch_norm:
            layers += [conv, nn.BatchNorm2d(b), nn.ReLU()]
        else:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
            layers += [conv, nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, n_classes)]
    return nn.Sequential(*layers)


def linear_classifier(d_in: int, n_classes: int) -> nn.Linear:
    """Multinomial logistic regression: a single linear layer (a convex problem)."""
    return nn.Linear(d_in, n_classes)
