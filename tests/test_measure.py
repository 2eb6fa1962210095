"""Weights, parameters, FLOPs (MACs), latency and file sizes on hand-computable models."""

from __future__ import annotations

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
