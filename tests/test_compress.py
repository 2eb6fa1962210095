"""Masks, propagation, the physically smaller model, bit precision and the compressed file."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.compress import (
    CompressConfig, PruneError, UnsupportedModelError, build_chain, compress, masked, plan_from_thresholds,
    propagate, shrink,
)
from bayescomp.compress.precision import (
    bits_per_weight, exponent_bits, layer_precisions, quantize_fixed_point, significand_bits,
)
from bayescomp.models import MODELS, create_model
from bayescomp.modules import InputSelect
from bayescomp.priors import bayesian_layers, deterministic_mode


def _randomise_posterior(model: nn.Module, seed: int = 0) -> nn.Module:
    """Spread log alpha over [-6, 2] so thresholds prune a realistic mix of groups."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in bayesian_layers(model):
        with torch.no_grad():
            layer.z_mu.copy_(torch.empty(layer.z_mu.shape).uniform_(0.5, 1.5, generator=g))
            log_alpha = torch.empty(layer.z_mu.shape).uniform_(-6, 2, generator=g)
            layer.z_log_sigma2.copy_(log_alpha + torch.log(layer.z_mu**2))
            layer.weight_log_sigma2.uniform_(-12, -4, generator=g)
    return model


def _bayes(name: str, input_shape=(1, 28, 28), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, 10, input_shape, [0.13] * input_shape[0], [0.31] * input_shape[0])
    return _randomise_posterior(bayesify(model, "gnj"), seed)


@pytest.mark.parametrize("name,shape", [("lenet300", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("vgg16", (3, 32, 32))])
def test_shrunk_model_equals_masked_model(name, shape):
    model = _bayes(name, shape)
    model.eval()
    if name == "vgg16":  # give batch norm non-trivial statistics so removed channels would matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.data.uniform_(-0.2, 0.2)
    chain = build_chain(model)
    plan, _ = plan_from_thresholds(chain, -1.0)
    small = shrink(chain, plan)
    x = torch.rand(16, *shape)
    with deterministic_mode(model), masked(chain, plan), torch.no_grad():
        expected = model(x)
    with torch.no_grad():
        got = small(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # physically smaller: fewer weights, plain layers only
    small_weights = sum(m.weight.numel() for m in small.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert small_weights == plan.weights_kept(chain) < sum(
        layer.module.weight_mu.numel() for layer in chain.layers)
    assert not any(isinstance(m, tuple(type(layer) for _, layer in bayesian_layers(model))) for m in small.modules())


def test_mask_propagation_conv_flatten_linear():
    """A conv filter whose features no FC input uses disappears, and FC inputs of a removed filter disappear."""
    torch.manual_seed(0)
    model = bayesify(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 5), nn.ReLU(),
                                   nn.Linear(5, 2)), "gnj")
    chain = build_chain(model)
    conv_keep = torch.tensor([True, False, True])
    fc_keep = torch.zeros(12, dtype=torch.bool)
    fc_keep[4:8] = True  # only features of channel 1 (removed by the conv mask) ...
    fc_keep[8] = True  # ... and one feature of channel 2
    plan = propagate(chain, [conv_keep, fc_keep, torch.ones(5, dtype=torch.bool)])
    assert plan.out_keep[0].tolist() == [False, False, True]  # channel 0 unused downstream, channel 1 pruned
    expected_in = torch.zeros(12, dtype=torch.bool)
    expected_in[8] = True
    assert torch.equal(plan.in_keep[1], expected_in)
    small = shrink(chain, plan)
    assert isinstance(small[2], InputSelect) and small[2].indices.tolist() == [0]
    x = torch.rand(4, 1, 4, 4)
    with deterministic_mode(model), masked(chain, plan), torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_linear_to_linear_propagation_removes_dead_units():
    model = bayesify(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), "gnj")
    chain = build_chain(model)
    plan = propagate(chain, [torch.tensor([True, True, False, True]), torch.tensor([False, True, True])])
    assert plan.out_keep[0].tolist() == [False, True, True]
    assert plan.in_keep[1].tolist() == [False, True, True]
    assert plan.out_keep[1].all()
    assert plan.kept_architecture(chain) == [3, 2]
    small = shrink(chain, plan)
    assert isinstance(small[0], InputSelect) and small[1].weight.shape == (2, 3)


def test_thresholds_that_prune_everything_raise_and_change_nothing():
    model = _bayes("lenet300")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match="every .* unit of layer"):
        compress(model, None, CompressConfig(thresholds=-100.0))
    with pytest.raises(ValueError, match="3 thresholds"):
        compress(model, None, CompressConfig(thresholds=[0.0, 0.0]))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unsupported_structures_get_clear_errors():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(UnsupportedModelError, match="not an nn.Sequential"):
        build_chain(bayesify(Residual(), "gnj"))
    with pytest.raises(UnsupportedModelError, match="'1'.*Upsample"):
        build_chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2)))


def test_bits_per_weight_follows_the_round_off_rule():
    # 2 Var = 2^-5.5 -> round-offs 2^-1..2^-5 exceed it: 5 bits
    var = torch.tensor([2.0**-6.5, 0.6, 1e-30])
    assert bits_per_weight(var).tolist() == [5, 0, 23]
    assert significand_bits(torch.tensor([2.0**-6.5, 2.0**-8.5])) == 6  # mean(5, 7)
    assert significand_bits(torch.tensor([2.0**-6.5, 2.0**-8.5]), reduce="max") == 7
    assert significand_bits(torch.tensor([10.0])) == 1  # min_bits guard: never zero bits
    with pytest.raises(ValueError):
        significand_bits(torch.tensor([]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bits_per_weight_is_exact_at_the_powers_of_two(dtype):
    """The frexp count against the definition checked bit by bit (every t compared), on values at, one ulp
    below and one ulp above each power of two, zero, negatives, subnormals and random variances."""
    powers = torch.exp2(-torch.arange(0, 60, dtype=torch.float64)) / 2
    values = torch.cat([powers, torch.nextafter(powers, torch.zeros(())), torch.nextafter(powers, torch.ones(()) * 9),
                        torch.tensor([0.0, -1.0, 1e-300, 5e-324, 3.0]), torch.rand(20000, dtype=torch.float64) ** 8])
    values = values.to(dtype)
    t = torch.arange(1, 24, dtype=torch.float64)
    definition = (2.0 * values.double().reshape(-1, 1) < 2.0 ** (-t)).sum(1)
    assert torch.equal(bits_per_weight(values), definition)


@pytest.mark.parametrize("overflow,expected", [(0.0, 1), (0.3, 1), (0.5, 1), (0.99, 1), (1.0, 1), (2.0, 2),
                                               (4.0, 3), (100.0, 4)])
def test_exponent_bits_guard(overflow, expected):
    bits = exponent_bits(overflow)
    assert bits == expected and isinstance(bits, int)
    if overflow > 2:  # the unguarded formula where it is defined
        assert bits == math.ceil(math.log2(math.log2(overflow) + 1) + 1)


def test_exponent_bits_rejects_nan():
    with pytest.raises(ValueError):
        exponent_bits(float("nan"))


def test_quantize_fixed_point_grid():
    w = torch.tensor([0.1, -0.26, 0.74, 1e-4])
    q = quantize_fixed_point(w, 2)
    assert q.tolist() == [0.0, -0.25, 0.75, 0.0]
    assert torch.all((quantize_fixed_point(w, 10) - w).abs() <= 2.0**-11)
    precisions = layer_precisions([torch.full((3,), 1e-5)], [w])
    assert precisions[0].total_bits == 1 + precisions[0].exponent_bits + precisions[0].significand_bits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_bayesifies_and_has_a_compression_path(name):
    """Sequential zoo models are chains; the others (ResNets) are analysed as a dependency graph."""
    shape = (3, 32, 32) if MODELS[name].default_data == "cifar10" else (1, 28, 28)
    model = create_model(name, 10, shape, [0.5] * shape[0], [0.25] * shape[0])
    bayes = bayesify(model, "gnj")
    layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert sum(1 for _ in bayesian_layers(bayes)) == layers
    if isinstance(model, nn.Sequential):
        assert len(build_chain(bayes).layers) == layers
    else:
        from bayescomp.compress.graph import DependencyGraph

        graph = DependencyGraph(bayes, torch.rand(2, *shape))
        touched = {m.layer for g in graph.groups for m in g.members}
        assert len(touched) == layers and graph.prunable_groups


@pytest.mark.parametrize("prior", sorted(__import__("bayescomp.priors", fromlist=["PRIORS"]).PRIORS))
def test_every_prior_compresses_to_a_small_model_equal_to_the_masked_one(prior):
    """Iterates the registry: group priors and the per-weight priors (Sparse VD, Turbo-VBI) all go through the same
    compression."""
    torch.manual_seed(0)
    model = bayesify(create_model("lenet5", 10, (1, 28, 28), [0.13], [0.31]), prior)
    g = torch.Generator().manual_seed(1)
    for _, layer in bayesian_layers(model):
        with torch.no_grad():
            factor = torch.empty(layer.weight_mu.shape).uniform_(0.2, 2.0, generator=g)
            tiny = torch.rand(layer.weight_mu.shape, generator=g) < 0.3  # weights a per-weight prior drops
            layer.weight_mu.mul_(torch.where(tiny, 1e-4, factor))
            layer.weight_log_sigma2.uniform_(-10, 0, generator=g)
        layer.apply_constraints()  # priors with closed-form hyper-parameter steps refresh them from the new weights
        if hasattr(layer, "turbo_update"):
            layer.turbo_update()
    chain = build_chain(model)
    stats = [layer.module.group_log_alpha().detach() for layer in chain.layers]
    thresholds = [float(s.quantile(0.6)) + 1e-6 for s in stats]
    result = compress(model, None, CompressConfig(thresholds=thresholds))
    plan, _ = plan_from_thresholds(chain, thresholds)
    x = torch.rand(8, 1, 28, 28)
    with deterministic_mode(model), masked(chain, plan), torch.no_grad():
        expected = model(x)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), expected, rtol=1e-4, atol=1e-5)
    masks = [layer.module.weight_keep_mask() for layer in chain.layers]
    per_weight = masks[0] is not None
    assert all((m is not None) == per_weight for m in masks)
    if per_weight:  # (Sparse VD, Turbo-VBI) the stored weights are zero exactly where the per-weight mask prunes them
        kept = sum(int(m[o][:, i].sum()) for m, i, o in zip(masks, plan.in_keep, plan.out_keep))
        assert result.weights_nonzero == kept < result.weights_kept
        assert result.compression_nonzero > result.compression_architecture
    else:
        assert all(m is None for m in masks)
        assert result.weights_nonzero == result.weights_kept
    # default thresholds: the search for group priors, the prior's own per-weight rule for per-weight priors
    if per_weight:
        default = compress(model, None)
        assert default.thresholds == [float(layer.module.config.threshold) for layer in chain.layers]
    with pytest.raises(ValueError, match="validation data"):
        compress(model, None, CompressConfig(thresholds="search"))


def test_empty_units_are_folded_into_the_next_bias_exactly():
    """A unit whose incoming weights are all pruned outputs a constant; compression removes it and adds its
    contribution to the next layer's bias, so the small model still computes the posterior-mean network."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 20), nn.Sigmoid(), nn.Linear(20, 10))
    model = bayesify(plain, "turbo")
    empty_rows = {0: [2], 1: [5], 2: [7, 11]}
    for index, (_, layer) in enumerate(bayesian_layers(model)):
        with torch.no_grad():
            layer.bias_mu.uniform_(-1, 1)  # the folded constants are not trivial
            layer.support_log_odds.fill_(20.0)
            layer.support_log_odds[empty_rows.get(index, [])] = -20.0
    x = torch.rand(16, 1, 14, 14)
    with deterministic_mode(model), torch.no_grad():
        expected = model(x)
    folded = compress(model, None)
    unfolded = compress(model, None, CompressConfig(fold_empty_units=False))
    # without folding, empty filters go with their group (bias and all: not exact) and empty neurons stay
    assert unfolded.architecture_kept == [5, 7, 112, 20]
    assert folded.architecture_kept == [5, 7, 112, 18]  # conv2's filter owned 16 of the linear layer's inputs
    with torch.no_grad():
        torch.testing.assert_close(folded.model(x), expected, rtol=1e-5, atol=1e-5)
    # the masked model of the folded plan is the same function
    chain = build_chain(model)
    with deterministic_mode(model), masked(chain, folded.plan), torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_units_no_later_weight_reads_are_removed_exactly():
    """A per-weight prior can empty a filter's whole input column of the next convolution: the filter then feeds
    nothing, and compression removes it (exact even before a padded convolution, where folding is not)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 10 * 10, 10))
    model = bayesify(plain, "turbo")
    layers = [layer for _, layer in bayesian_layers(model)]
    with torch.no_grad():
        for layer in layers:
            layer.bias_mu.uniform_(-1, 1)
            layer.support_log_odds.fill_(20.0)
        layers[1].support_log_odds.view(8, 6, 9)[:, 4] = -20.0  # no filter of conv2 reads conv1's filter 4
    x = torch.rand(4, 1, 12, 12)
    with deterministic_mode(model), torch.no_grad():
        expected = model(x)
    result = compress(model, None)
    assert result.architecture_kept[:2] == [5, 8]
    assert result.model[0].out_channels == 5 and result.model[2].in_channels == 5
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), expected, rtol=1e-5, atol=1e-5)
    kept = compress(model, None, CompressConfig(fold_empty_units=False))  # the clean-up is part of that setting
    assert kept.architecture_kept[:2] == [6, 8]


def test_units_before_a_padded_convolution_are_not_folded():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(5 * 8 * 8, 10))
    model = bayesify(plain, "turbo")
    layer = next(layer for _, layer in bayesian_layers(model))
    with torch.no_grad():
        layer.bias_mu.fill_(0.5)
        layer.support_log_odds.fill_(20.0)
        layer.support_log_odds[1] = -20.0
    for _, other in list(bayesian_layers(model))[1:]:
        other.support_log_odds.fill_(20.0)
    result = compress(model, None)
    # the constant map would meet the next convolution's zero padding: nothing is folded, and the empty filter goes
    # with its group as for the group priors (the bias with it); the small model is the masked model of that plan
    assert result.plan.bias_shift is None and result.architecture_kept[0] == 3
    x = torch.rand(4, 1, 10, 10)
    chain = build_chain(model)
    with deterministic_mode(model), masked(chain, result.plan), torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
