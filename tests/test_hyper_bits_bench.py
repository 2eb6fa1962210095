"""The hypernetwork bit-width benchmark's counting (benchmarks/hyper_bits.py) against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescomp.compress import save_quantized
from bayescomp.compress.packed import load_packed
from bayescomp.compress.precision import LayerPrecision
from benchmarks.hyper_bits import bits_rate, stored_significand_bits


def test_stored_bits_are_read_back_from_the_grid_steps_and_counted_by_the_rate_formula(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight.mul_(4.0)  # largest |w| between 1 and 2: exponent bits ceil(log2(log2 |w| + 1) + 1) = 2
    precisions = [LayerPrecision(9, 2), LayerPrecision(4, 2), LayerPrecision(23, 9)]  # the last stays float32
    save_quantized(model, precisions, tmp_path / "m.bcz")
    loaded, meta = load_packed(tmp_path / "m.bcz")
    assert stored_significand_bits(meta["_packed"], loaded) == [9, 4, 23]
    # by hand: 1 sign + 2 exponent bits + the significand bits, times each layer's weights
    rate, totals = bits_rate(loaded, [9, 4, 23], weights_dense=1000)
    largest = max(float(m.weight.detach().abs().max()) for m in loaded if isinstance(m, nn.Linear))
    assert 1.0 < largest < 2.0
    assert totals == [12, 7, 26]
    assert rate == pytest.approx(32 * 1000 / (72 * 12 + 18 * 7 + 6 * 26))
