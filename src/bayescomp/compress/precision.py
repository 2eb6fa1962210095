"""Per-layer bit precision from the posterior variance (Louizos et al. 2017, Sec. 4; authors' compression.py).

A weight whose posterior variance is large need not be stored precisely. With t significand bits the unit
round-off is 2^-t; a weight "needs" every t for which 2^-t still exceeds twice its marginal variance, so its bit
count is #{t in 1..max_bits : 2 Var(w) < 2^-t}. A layer's significand bits are the ceiling of the mean (default,
as in the reference code's compression rate) or max over its kept weights. One exponent-bit count serves all
layers: ceil(log2(log2(overflow) + 1) + 1) with overflow = the largest |E[w]|.

Guard (UNVERIFIED territory, our choice): for overflow <= 1 the formula's inner log2 is <= 0, giving NaN or
negative bits; we clamp log2(overflow) at 0 there, which yields 1 exponent bit (the sign of the exponent).

The weights themselves are quantised on the fixed-point grid of step 2^-t per layer, as in the reference code's
``special_round``: floor(w / 2^-t + 0.5) * 2^-t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_SIGNIFICAND_BITS = 23


@dataclass
class LayerPrecision:
    """Bits of one layer: ``total_bits = 1 (sign) + exponent_bits + significand_bits``; grid step 2^-t."""

    significand_bits: int
    exponent_bits: int

    @property
    def total_bits(self) -> int:
        return 1 + self.exponent_bits + self.significand_bits

    @property
    def step(self) -> float:
        return 2.0 ** (-self.significand_bits)


def bits_per_weight(variance: torch.Tensor, max_bits: int = MAX_SIGNIFICAND_BITS) -> torch.Tensor:
    """Number of t in 1..max_bits with 2 * Var < 2^-t, for every weight (vectorised).

    Exact without a logarithm: with 2 Var = m 2^e, m in [0.5, 1) (``frexp``), 2 Var < 2^-t holds exactly when
    t <= -e, so the count is -e clipped to [0, max_bits]; a variance of 0 (or below) keeps every bit."""
    doubled = 2.0 * variance.reshape(-1)
    bits = (-torch.frexp(doubled).exponent).clamp(0, max_bits).long()
    return torch.where(doubled <= 0, max_bits, bits)


def significand_bits(variance: torch.Tensor, reduce: str = "mean", min_bits: int = 1,
                     max_bits: int = MAX_SIGNIFICAND_BITS) -> int:
    """Significand bits of a layer from its kept weights' variances (``reduce``: ``"mean"`` or ``"max"``)."""
    if variance.numel() == 0:
        raise ValueError("a layer with no kept weights has no precision")
    bits = bits_per_weight(variance, max_bits).double()
    value = bits.mean() if reduce == "mean" else bits.max() if reduce == "max" else None
    if value is None:
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return int(min(max_bits, max(min_bits, math.ceil(float(value) - 1e-12))))


def exponent_bits(overflow: float) -> int:
    """Exponent bits for magnitudes up to ``overflow``, guarded for overflow <= 1 (see module docstring)."""
    if not math.isfinite(overflow) or overflow < 0:
        raise ValueError(f"overflow must be a finite non-negative number, got {overflow}")
    inner = max(math.log2(overflow), 0.0) if overflow > 0 else 0.0
    return max(1, math.ceil(math.log2(inner + 1.0) + 1.0))


def quantize_fixed_point(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to the fixed-point grid of step 2^-bits (reference ``special_round``)."""
    step = 2.0 ** (-bits)
    return torch.floor(weight / step + 0.5) * step


def layer_precisions(variances: list[torch.Tensor], weights: list[torch.Tensor], reduce: str = "mean",
                     min_bits: int = 1) -> list[LayerPrecision]:
    """Precision of every layer from its kept weights' variances and values."""
    overflow = max(float(w.abs().max()) for w in weights if w.numel())
    exp_bits = exponent_bits(overflow)
    return [LayerPrecision(significand_bits(v, reduce, min_bits), exp_bits) for v in variances]


class BitWidths:
    """Bit widths and the bit-precision compression of a result holding ``model`` (the shrunk plain network),
    ``precisions`` (one per Linear/Conv2d layer, in order) and ``weights_dense`` (the dense network's weights)."""

    model: torch.nn.Module
    precisions: list[LayerPrecision]
    weights_dense: int

    @property
    def bits_per_layer(self) -> list[int]:
        return [p.total_bits for p in self.precisions]

    @property
    def compression_bits(self) -> float:
        """32 x the dense network's weights / sum over layers of kept weights x bits per weight (the paper's
        "fast" rate; biases excluded)."""
        from bayescomp.compress.structure import prunable_modules  # structure imports the shrinking path

        return compression_with_bits([m.weight.numel() for m in prunable_modules(self.model)], self.precisions,
                                     self.weights_dense)


def compression_with_bits(kept_weights: list[int], precisions: list[LayerPrecision], weights_dense: int) -> float:
    """32 x the dense network's weights / sum over layers of kept weights x bits per weight."""
    return 32.0 * weights_dense / sum(k * p.total_bits for k, p in zip(kept_weights, precisions))
