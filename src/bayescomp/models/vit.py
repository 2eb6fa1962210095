"""A small Vision Transformer for 32x32 images: the transformer-style network bayescomp compresses end to end.

Patch embedding (a stride-``patch`` convolution, Dosovitskiy et al. 2021), a learned position embedding, ``depth``
pre-norm blocks of multi-head self-attention and a GELU MLP, a final LayerNorm, mean pooling over the tokens and
a Linear head. Not registered in the zoo (:data:`bayescomp.models.MODELS`): its attention and norms stay plain
under :func:`bayescomp.bayesify`, so it is the example of a model of your own with modules bayescomp keeps as
they are. What compression can remove is each block's MLP hidden units (``mlp_hidden_filter``); the residual
stream, attention and norms keep their width (see :mod:`bayescomp.compress.graph`).

Every tensor lives in a submodule (the position table is an ``nn.Embedding`` called on the token indices), so
the dependency graph can trace it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bayescomp.modules import Normalize


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, C, H, W) -> (B, H/patch * W/patch, dim)."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Images in [0, 1] -> logits (input normalisation inside, as in the zoo)."""

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), patch: int = 4, dim: int = 64,
                 depth: int = 2, heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.tokens = (height // patch) * (width // patch)
        self.normalize = Normalize(tuple(mean) * (channels if len(mean) == 1 else 1),
                                   tuple(std) * (channels if len(std) == 1 else 1))
        self.patch = PatchEmbed(channels, dim, patch)
        self.pos = nn.Embedding(self.tokens, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(self.normalize(x))
        positions = torch.arange(self.tokens, device=x.device)
        tokens = self.blocks(tokens + self.pos(positions))
        return self.head(self.norm(tokens).mean(1))


def mlp_hidden_filter(module: nn.Module, name: str) -> bool:
    """``filter_fn`` for :func:`bayescomp.bayesify`: Bayesian only the MLPs' second layers, whose input groups are
    the hidden units (BC-GNJ's z on them decides which hidden units go); everything else stays plain."""
    return name.endswith("fc2")
