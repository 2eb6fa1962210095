"""Weights, parameters, FLOPs (MACs), latency and file sizes on hand-computable models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescomp import measure
from bayescomp.modules import InputSelect, Normalize


def small_model() -> nn.Sequential:
    return nn.Sequential(Normalize([0.5], [0.5]), nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(18, 4))


def test_flops_by_hand():
    # conv: 2 x 3 x 3 outputs, each 1 x 3 x 3 MACs = 162; linear 18 x 4 = 72
    assert measure.count_flops(small_model(), (1, 5, 5)) == 162 + 72


def test_flops_grouped_strided_conv_and_input_select():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False), nn.Flatten(),
                          InputSelect(torch.arange(0, 96, 2), 96), nn.Linear(48, 5))
    # conv output 6 x 4 x 4 = 96 elements, each (4 / 2) x 3 x 3 = 18 MACs; linear 48 x 5
    assert measure.count_flops(model, (4, 8, 8)) == 96 * 18 + 48 * 5


def test_flops_counts_subclasses_and_restores_training_mode():
    class MyLinear(nn.Linear):
        pass

    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(1, 2, 3), nn.Flatten(), MyLinear(18, 4)).train()
    assert measure.count_flops(model, (1, 5, 5)) == 162 + 72
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_weight_and_parameter_counts():
    model = small_model()
    assert measure.count_weights(model) == 2 * 9 + 18 * 4  # biases excluded
    assert measure.count_parameters(model) == 2 * 9 + 2 + 18 * 4 + 4
    with_bn = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4))
    assert measure.count_weights(with_bn) == 12
    assert measure.count_parameters(with_bn) == 12 + 8


def test_latency_report():
    before = torch.get_num_threads()
    model = small_model().train()
    stats = measure.measure_latency(model, (1, 5, 5), batch_size=4, repeats=7, warmup=2, num_threads=1)
    assert set(stats) == {"batch_size", "median_ms", "p10_ms", "p90_ms", "repeats", "threads", "device",
                          "dtype"}
    assert stats["batch_size"] == 4 and stats["repeats"] == 7 and stats["threads"] == 1
    assert stats["device"] == "cpu" and stats["dtype"] == "float32"
    assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert torch.get_num_threads() == before and model.training


def test_latency_time_bounds():
    model = small_model()
    longer = measure.measure_latency(model, (1, 5, 5), batch_size=1, repeats=3, warmup=0, min_time_s=0.05)
    assert longer["repeats"] > 3
    capped = measure.measure_latency(model, (1, 5, 5), batch_size=1, repeats=10**7, warmup=0, max_time_s=0.05)
    assert 3 <= capped["repeats"] < 10**7
    with pytest.raises(ValueError):
        measure.measure_latency(model, (1, 5, 5), batch_size=0)


def test_file_sizes(tmp_path):
    model = small_model()
    size = measure.state_dict_size_bytes(model)
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    assert measure.file_size(path) == path.stat().st_size
    assert abs(size - measure.file_size(path)) < 1024  # same tensors; only the archive names differ
    assert size > 4 * measure.count_parameters(model)


def test_csr_storage_bits_by_hand():
    weight = torch.tensor([[0.0, 1.5, 0.0, -2.0],
                           [0.0, 0.0, 0.0, 0.0],
                           [3.0, -0.0, 4.0, 5.0]])  # 5 non-zeros (-0.0 is zero), 3 rows, 4 columns
    values, columns, pointers = 5 * 32, 5 * 2, (3 + 1) * 3  # ceil(log2 4) = 2, ceil(log2 6) = 3
    assert measure.csr_storage_bits(weight) == values + columns + pointers == 182
    assert measure.csr_storage_bits(weight, value_bits=4) == 5 * 4 + 10 + 12
    # one column and no non-zeros: indices still take at least 1 bit each
    assert measure.csr_storage_bits(torch.tensor([[0.0], [2.0]])) == 32 + 1 + 3 * 1
    assert measure.csr_storage_bits(torch.zeros(2, 7)) == 0 + 0 + 3 * 1
    with pytest.raises(ValueError):
        measure.csr_storage_bits(torch.ones(4))
    with pytest.raises(ValueError):
        measure.csr_storage_bits(weight, value_bits=0)


def test_csr_storage_bits_conv_is_reshaped_per_output_channel():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 3, 5, 5, generator=generator)
    weight[torch.rand(weight.shape, generator=generator) < 0.9] = 0
    nnz = int((weight != 0).sum())
    # 6 rows of 75 columns: ceil(log2 75) = 7 bits per column index
    expected = nnz * 8 + nnz * 7 + 7 * max(1, math.ceil(math.log2(nnz + 1)))
    assert measure.csr_storage_bits(weight, value_bits=8) == expected
    assert measure.csr_storage_bits(weight, 8) == measure.csr_storage_bits(weight.reshape(6, 75), 8)


def test_count_nonzero_weights_and_compression_csr():
    model = small_model()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, 0, 0, 0] = 1.0
        model[4].weight[:, :9] = 0  # 4 x 9 zeros of 72
        model[4].bias.zero_()
    assert measure.count_nonzero_weights(model) == 1 + 72 - 36  # biases excluded

    dense = torch.randn(10, 10) + 10  # no zeros
    rate = measure.compression_csr(100, [dense])
    assert rate < 1  # 32 bits per value plus 4-bit column indices plus row pointers
    assert rate == pytest.approx(3200 / (3200 + 100 * 4 + 11 * 7))
    weights = [model[1].weight, model[4].weight]
    expected = 32 * 90 / (measure.csr_storage_bits(weights[0], 5) + measure.csr_storage_bits(weights[1], 3))
    assert measure.compression_csr(90, weights, [5, 3]) == pytest.approx(expected)
    assert measure.compression_csr(90, weights, 4) > measure.compression_csr(90, weights, 32)
    with pytest.raises(ValueError):
        measure.compression_csr(90, weights, [5])
    with pytest.raises(ValueError):
        measure.compression_csr(90, [])


def test_nonzero_flops_count_only_nonzero_weights():
    from bayescomp.measure import count_flops

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():
        model[0].weight[0] = 0.0  # one whole filter: 2*3*3 weights at 4*4 positions
        model[2].weight[:, :10] = 0.0
    dense = count_flops(model, (2, 6, 6))
    assert dense == 16 * 3 * 18 + 48 * 5
    sparse = count_flops(model, (2, 6, 6), nonzero_only=True)
    assert sparse == 16 * (3 * 18 - 18) + (48 - 10) * 5


def test_latency_pair_is_interleaved_and_consistent():
    from bayescomp.report import measure_latency_pair

    big = nn.Sequential(nn.Flatten(), nn.Linear(25, 400), nn.ReLU(), nn.Linear(400, 10))
    small = nn.Sequential(nn.Flatten(), nn.Linear(25, 10))
    out = measure_latency_pair(big, small, (1, 5, 5), rounds=2)
    assert out["rounds"] == 2 and set(out["dense"]) == set(out["compressed"]) == set(out["speedup"])
    for key, ratio in out["speedup"].items():
        assert ratio == pytest.approx(out["dense"][key] / out["compressed"][key])
        assert out["dense"][key] > 0 and out["compressed"][key] > 0
