"""Adaptive batch norm for the pruning search (``CompressConfig.search_bn_images``): inside the block the statistics
are those of the calibration images as the (masked) model computes them, checked against an independent
computation; on exit everything is restored exactly; the search then runs on a real model and leaves it unchanged,
and the cut it delivers keeps the re-estimated statistics, so it scores what the search scored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescomp.compress import CompressConfig, compress
from bayescomp.compress.batchnorm import recalibrate_batchnorm, recalibrated_batchnorm
from bayescomp.data import TensorData
from bayescomp.evaluation import evaluate
from bayescomp.measure import count_flops
from tests.test_graph import Branchy, _noisy


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


def _images(n: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    return TensorData(torch.randint(0, 256, (n, 1, 10, 10), generator=g, dtype=torch.uint8),
                      torch.randint(0, 10, (n,), generator=g))


def test_statistics_inside_are_the_calibration_images_and_everything_is_restored():
    model = _net()
    model(torch.rand(4, 1, 10, 10))  # materialise the lazy layer
    with torch.no_grad():  # statistics far from the data's, so a no-op would be caught
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(9.0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    calibration = _images(200, seed=1)
    x = calibration.example(200)
    # independent: the second BN's input on the calibration images, computed with the first BN in batch statistics
    with torch.no_grad():
        h = model[0](x)
        mean1, var1 = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
        h = (h - mean1.view(1, -1, 1, 1)) / torch.sqrt(h.var((0, 2, 3), unbiased=False).view(1, -1, 1, 1) + 1e-5)
        h = model[3](torch.relu(h * model[1].weight.view(1, -1, 1, 1) + model[1].bias.view(1, -1, 1, 1)))
        mean2, var2 = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
    with recalibrated_batchnorm(model, calibration, batch_size=200):
        assert not model[1].training and not model[4].training and not model.training
        torch.testing.assert_close(model[1].running_mean, mean1, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model[1].running_var, var1, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model[4].running_mean, mean2, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model[4].running_var, var2, rtol=1e-4, atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    assert not any(m.training for m in model.modules())


def test_restored_even_when_the_block_raises():
    model = _net()
    model(torch.rand(4, 1, 10, 10))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"):
        with recalibrated_batchnorm(model, _images(50, seed=2)):
            raise RuntimeError("inside")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_recalibration_helps_a_network_with_shifted_statistics():
    """Stale statistics (as after pruning) ruin the error; re-estimated ones on other images restore most of it."""
    torch.manual_seed(0)
    data = _images(400, seed=3)
    model = _net()
    model(torch.rand(4, 1, 10, 10))
    model.eval()
    with recalibrated_batchnorm(model, data), torch.no_grad():
        labels = torch.cat([model(x).argmax(1) for x, _ in data.batches(100)])
    relabelled = TensorData(data.images, labels)  # the calibrated model is right on every image by construction
    with torch.no_grad():
        model[1].running_mean.add_(3.0)
    assert evaluate(model, relabelled)["error_pct"] > 20.0
    with recalibrated_batchnorm(model, _images(400, seed=4)):
        assert evaluate(model, relabelled)["error_pct"] < 10.0


def test_search_with_recalibration_meets_the_budget_and_leaves_the_model(mnist_small):
    bayes = _noisy(Branchy(), seed=5)
    before = {k: v.clone() for k, v in bayes.state_dict().items()}
    shape = tuple(mnist_small.val.example(1).shape[1:])
    config = CompressConfig(target_macs=2.0, search="greedy", search_bn_images=100, search_val_size=200,
                            fold_empty_units=False)
    result = compress(bayes, mnist_small.val, config)
    assert count_flops(result.model, shape) <= count_flops(Branchy(), shape) / 2
    assert all(torch.equal(before[k], v) for k, v in bayes.state_dict().items())
    with pytest.raises(ValueError, match="count of images"):
        CompressConfig(search_bn_images=-1)


def test_recalibrate_for_good_keeps_the_statistics_the_block_computes():
    model = _net()
    model(torch.rand(4, 1, 10, 10))
    model.eval()
    calibration = _images(150, seed=6)
    with recalibrated_batchnorm(model, calibration, batch_size=50):
        inside = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model[1].train()  # a flag that must come back as it was
    assert recalibrate_batchnorm(model, calibration, batch_size=50) == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, inside[k], rtol=0, atol=0)
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    assert model[1].training and not model[4].training
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(3, 2)), calibration) == 0


@pytest.mark.parametrize("search", ["uniform", "greedy"])
def test_delivered_cut_scores_what_the_search_scored(mnist_small, search):
    """The search scores each candidate with re-estimated statistics; the cut handed back must carry them: its
    error on the search's own subset equals the error the search recorded for the chosen plan, and differs from
    the same cut's error with the unpruned network's statistics (so a cut without re-estimation would fail)."""
    bayes = _noisy(Branchy(), seed=7)
    config = CompressConfig(target_macs=2.0, search=search, search_bn_images=100, search_val_size=200,
                            fold_empty_units=False)
    result = compress(bayes, mnist_small.val, config)
    subset = mnist_small.val.subset(200, seed=0)
    delivered = evaluate(result.model, subset)["error_pct"]
    assert delivered == pytest.approx(result.search_path[-1]["val_error_pct"], abs=1.0)
    stale = compress(bayes, mnist_small.val, CompressConfig(thresholds=result.thresholds, fold_empty_units=False))
    assert stale.architecture_kept == result.architecture_kept
    norms = [(a, b) for a, b in zip(result.model.modules(), stale.model.modules()) if isinstance(a, nn.BatchNorm2d)]
    assert norms and any(not torch.allclose(a.running_mean, b.running_mean) for a, b in norms)
