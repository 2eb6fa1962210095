"""Turbo-VBI: the closed-form rho- and s-steps against direct numerical optimisation of the ELBO, the layers'
moments against sampling, the Turbo schedule, and pruning by the posterior support."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar
from torch import nn

from bayescomp.priors.turbo_updates import (
    GammaPair,
    convention_constants,
    mean_field_evidence,
    mean_field_rho_step,
    structured_posteriors,
)
from bayescomp import bayesify
from bayescomp.priors.turbo_vbi import Conv2dTurboVBI, LinearTurboVBI, TurboVBIConfig

PAIR = GammaPair(a=1.3, b=0.7, a_bar=2.0, b_bar=0.004)


# --- an independent ELBO of one weight, written with torch.distributions -------------------------------------------
def _gamma_terms(shape: float, rate: float, a: float, b: float, c1: float, c2: float, x: float) -> float:
    """E_q[c1 ln rho - c2 rho x] + E_q[ln Gamma(rho; a, b)] + H[q], q = Gamma(shape, rate)."""
    q = torch.distributions.Gamma(torch.tensor(shape, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64))
    e_rho, e_log = shape / rate, float(torch.digamma(torch.tensor(shape, dtype=torch.float64))) - math.log(rate)
    log_prior = a * math.log(b) - math.lgamma(a) + (a - 1) * e_log - b * e_rho
    return c1 * e_log - c2 * e_rho * x + log_prior + float(q.entropy())


def _bernoulli_terms(p: float, prior: float) -> float:
    return p * math.log(prior) + (1 - p) * math.log(1 - prior) - p * math.log(p) - (1 - p) * math.log(1 - p)


def _mean_field_elbo(shape, rate, p, x, prior, c1, c2):
    """ELBO of q(rho) q(s): the Gamma prior term is averaged over s inside, with one q(rho)."""
    e_rho = shape / rate
    e_log = float(torch.digamma(torch.tensor(shape, dtype=torch.float64))) - math.log(rate)
    q = torch.distributions.Gamma(torch.tensor(shape, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64))
    value = c1 * e_log - c2 * e_rho * x + float(q.entropy())
    for weight, a, b in ((p, PAIR.a, PAIR.b), (1 - p, PAIR.a_bar, PAIR.b_bar)):
        value += weight * (a * math.log(b) - math.lgamma(a) + (a - 1) * e_log - b * e_rho)
    return value + _bernoulli_terms(p, prior)


def _structured_elbo(params, x, prior, c1, c2):
    shape1, rate1, shape0, rate0 = np.exp(params[:4])
    p = 1 / (1 + math.exp(-params[4]))
    return (p * _gamma_terms(shape1, rate1, PAIR.a, PAIR.b, c1, c2, x)
            + (1 - p) * _gamma_terms(shape0, rate0, PAIR.a_bar, PAIR.b_bar, c1, c2, x) + _bernoulli_terms(p, prior))


@pytest.mark.parametrize("convention", ["real", "complex"])
@pytest.mark.parametrize("x", [1e-4, 0.02, 0.9])
def test_mean_field_rho_and_s_steps_maximise_the_elbo(convention, x):
    c1, c2 = convention_constants(convention)
    prior, p = 0.3, 0.62
    shape, rate = mean_field_rho_step(torch.tensor(x, dtype=torch.float64), torch.tensor(p, dtype=torch.float64),
                                      PAIR, convention)
    numeric = minimize(lambda v: -_mean_field_elbo(math.exp(v[0]), math.exp(v[1]), p, x, prior, c1, c2),
                       x0=[0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 4000})
    assert math.exp(numeric.x[0]) == pytest.approx(float(shape), rel=1e-4)
    assert math.exp(numeric.x[1]) == pytest.approx(float(rate), rel=1e-4)
    evidence = float(mean_field_evidence(shape, rate, PAIR))
    closed = 1 / (1 + math.exp(-(math.log(prior / (1 - prior)) + evidence)))
    best = minimize_scalar(lambda q: -_mean_field_elbo(float(shape), float(rate), q, x, prior, c1, c2),
                           bounds=(1e-12, 1 - 1e-12), method="bounded", options={"xatol": 1e-12})
    assert best.x == pytest.approx(closed, abs=1e-6)


@pytest.mark.parametrize("convention", ["real", "complex"])
@pytest.mark.parametrize("x", [1e-4, 0.02, 0.9])
def test_structured_rho_and_s_steps_are_the_joint_elbo_maximum(convention, x):
    c1, c2 = convention_constants(convention)
    prior = 0.3
    active, inactive, evidence = structured_posteriors(torch.tensor(x, dtype=torch.float64), PAIR, convention)
    closed_p = 1 / (1 + math.exp(-(math.log(prior / (1 - prior)) + float(evidence))))
    closed = [*map(float, (*active, *inactive)), closed_p]
    start = np.log([*closed[:4]]) + 0.3
    numeric = minimize(lambda v: -_structured_elbo(v, x, prior, c1, c2), x0=[*start, 0.0], method="BFGS",
                       options={"gtol": 1e-10})
    found = [*np.exp(numeric.x[:4]), 1 / (1 + math.exp(-numeric.x[4]))]
    assert found[4] == pytest.approx(closed_p, abs=1e-5)
    for got, want, weight in zip(found[:4], closed[:4], (closed_p, closed_p, 1 - closed_p, 1 - closed_p)):
        if weight > 1e-3:  # a component with negligible probability leaves its q(rho | s) unidentified
            assert got == pytest.approx(want, rel=1e-3)
    # the structured family contains the mean-field one, so its optimum is at least as high
    mf_best = -minimize(lambda v: -_mean_field_elbo(math.exp(v[0]), math.exp(v[1]), 1 / (1 + math.exp(-v[2])), x,
                                                    prior, c1, c2), x0=[0.0, 0.0, 0.0], method="Nelder-Mead",
                        options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 6000}).fun
    assert -numeric.fun >= mf_best - 1e-7


def _layer(cls, config, *shape):
    torch.manual_seed(0)
    plain = nn.Linear(*shape) if cls is LinearTurboVBI else nn.Conv2d(*shape)
    layer = cls.from_linear(plain, config) if cls is LinearTurboVBI else cls.from_conv2d(plain, config)
    with torch.no_grad():
        layer.weight_log_sigma2.uniform_(-6, -3)
    return layer


@pytest.mark.parametrize("cls, shape, x_shape", [(LinearTurboVBI, (6, 4), (3, 6)),
                                                  (Conv2dTurboVBI, (2, 3, 3), (2, 2, 5, 5))])
def test_local_reparameterisation_matches_the_weight_posterior_moments(cls, shape, x_shape):
    """Sampled pre-activations have the mean and variance that sampling w ~ N(mu, sigma²) implies:
    E = x mu + b and Var = x² sigma² (independent weights), computed here without the layer's forward."""
    layer = _layer(cls, TurboVBIConfig(), *shape)
    x = torch.randn(*x_shape)
    samples = 20000
    with torch.no_grad():
        outputs = torch.stack([layer(x) for _ in range(samples)])
        sigma2 = layer.weight_log_sigma2.exp()
        if cls is LinearTurboVBI:
            mean, var = x @ layer.weight_mu.T + layer.bias_mu, (x * x) @ sigma2.T
        else:
            mean = nn.functional.conv2d(x, layer.weight_mu, layer.bias_mu)
            var = nn.functional.conv2d(x * x, sigma2)
    tolerance = 5 * var.sqrt() / math.sqrt(samples)  # 5 standard errors of the sample mean
    assert ((outputs.mean(0) - mean).abs() <= tolerance).all()
    assert torch.allclose(outputs.var(0), var, rtol=0.1)  # the sample variance's relative SE is ~1 %


def test_kl_gradient_is_a_per_weight_decay_with_the_expected_precision():
    layer = _layer(LinearTurboVBI, TurboVBIConfig(), 5, 3)
    layer.kl_divergence().backward()
    expected = layer.precision_mean.reshape(layer.weight_mu.shape) * layer.weight_mu
    assert torch.allclose(layer.weight_mu.grad, expected.detach())
    sigma2 = layer.weight_log_sigma2.exp()
    expected_sigma = 0.5 * (layer.precision_mean.reshape(sigma2.shape) * sigma2 - 1)
    assert torch.allclose(layer.weight_log_sigma2.grad, expected_sigma.detach(), atol=1e-7)


@pytest.mark.parametrize("convention", ["real", "complex"])
def test_small_weights_lose_their_support_and_large_ones_keep_it(convention):
    config = TurboVBIConfig(p01=0.3, p11=0.7, p_start=0.5, convention=convention)
    layer = _layer(LinearTurboVBI, config, 40, 30)
    with torch.no_grad():
        layer.weight_mu.normal_(0, 0.1)
        layer.weight_mu[:, :20] *= 1e-3  # the first 20 inputs carry (nearly) nothing
        layer.weight_log_sigma2.fill_(-14)
        layer.reset_hyperparameters()
        for _ in range(5):
            layer.turbo_update()
    keep = layer.weight_keep_mask()
    assert keep[:, 20:].float().mean() > 0.9
    assert keep[:, :20].float().mean() < 0.1
    groups = layer.group_log_alpha() < config.threshold
    assert groups[20:].all() and not groups[:20].any()


def test_mean_field_support_is_sticky_as_documented():
    """The reference demo's q(rho) q(s) keeps whatever support it starts from (its E[rho] is computed under the
    current mixture), which is why ``structured`` is the default: from pi~ = 0.5 nothing is ever pruned, from
    pi~ ~ 0 most large weights stay pruned too, for the same weights that the structured family separates."""
    def run(start: float | None, factorization: str) -> torch.Tensor:
        torch.manual_seed(0)
        layer = _layer(LinearTurboVBI, TurboVBIConfig(p01=0.3, p11=0.7, p_start=0.5, factorization=factorization),
                       40, 30)
        with torch.no_grad():
            layer.weight_mu.normal_(0, 0.1)
            layer.weight_mu[:, :20] *= 1e-3
            layer.weight_log_sigma2.fill_(-14)
            layer.reset_hyperparameters()
            if start is not None:
                layer.support_log_odds.fill_(start)
            for _ in range(5):
                layer.turbo_update()
        return layer.weight_keep_mask()

    assert bool(run(None, "mean_field").all())
    from_inactive = run(-12.0, "mean_field")
    print("mean field from pi~ ~ 0 keeps", float(from_inactive[:, 20:].float().mean()), "of the large weights")
    assert from_inactive[:, 20:].float().mean() < 0.5 and not bool(from_inactive[:, :20].any())
    separated = run(-12.0, "structured")
    assert separated[:, 20:].float().mean() > 0.9 and not bool(separated[:, :20].any())


def test_the_mrf_fills_holes_inside_blocks():
    """Evidence alone keeps isolated strong weights and drops weak ones inside a block; the MRF prior (module B)
    lets the neighbours decide: a weak weight surrounded by kept weights is kept, an isolated one is not."""
    weak = 0.04  # a magnitude whose own evidence is mildly for 'inactive'
    layer = _layer(LinearTurboVBI, TurboVBIConfig(p01=0.05, p11=0.95, p_start=0.05), 12, 12)
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.weight_mu[2:8, 2:8] = 0.5
        layer.weight_mu[4, 4] = weak  # a hole inside the block
        layer.weight_mu[10, 10] = weak  # the same magnitude on its own
        layer.weight_log_sigma2.fill_(-16)
        layer.weight_scale.fill_(0.5)
        _, _, evidence = structured_posteriors(layer.second_moment(), layer.gamma_pair())
        assert evidence[4, 4] < 2  # not decisive on its own
        for _ in range(5):
            layer.turbo_update()
    keep = layer.weight_keep_mask()
    assert keep[4, 4] and not keep[10, 10]
    assert keep[2:8, 2:8].all() and int(keep.sum()) == 36


def test_turbo_schedule_runs_every_k_steps_and_per_epoch():
    layer = _layer(LinearTurboVBI, TurboVBIConfig(update_every=3), 4, 3)
    calls = layer.module_b_calls
    for _ in range(7):
        layer.apply_constraints()
    assert layer.module_b_calls - calls == 2 and int(layer.steps) == 7
    layer.on_epoch_end()
    assert layer.module_b_calls - calls == 2
    per_epoch = _layer(LinearTurboVBI, TurboVBIConfig(update_every=0), 4, 3)
    calls = per_epoch.module_b_calls
    for _ in range(7):
        per_epoch.apply_constraints()
    per_epoch.on_epoch_end()
    assert per_epoch.module_b_calls - calls == 1


def test_state_dict_round_trip_restores_the_hyperparameters():
    layer = _layer(Conv2dTurboVBI, TurboVBIConfig(), 2, 3, 3)
    for _ in range(4):
        layer.turbo_update()
    copy = Conv2dTurboVBI(2, 3, 3, config=TurboVBIConfig())
    copy.load_state_dict(layer.state_dict())
    for name in ("support_log_odds", "prior_log_odds", "precision_mean", "bp_messages", "weight_scale"):
        assert torch.equal(getattr(copy, name), getattr(layer, name)), name


@pytest.mark.parametrize("bad", [dict(factorization="x"), dict(convention="y"), dict(spike_std=5.0),
                                 dict(p11=1.0), dict(a_active=0.0), dict(update_every=-1)])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        TurboVBIConfig(**bad)


def test_fine_tuning_a_per_weight_pruned_model_keeps_its_zeros(mnist_small):
    from bayescomp.pipeline import finetune_keeping_zeros
    from bayescomp.train import TrainConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 10))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_(torch.rand(layer.weight.shape) < 0.2)
    zeros = [(layer.weight == 0).clone() for layer in (model[1], model[3])]
    before = [layer.weight.detach().clone() for layer in (model[1], model[3])]
    finetune_keeping_zeros(model, mnist_small, TrainConfig(epochs=1, lr=1e-2), None, False, lambda *_: None)
    for layer, zero, old in zip((model[1], model[3]), zeros, before):
        assert type(layer) is nn.Linear and set(dict(layer.named_parameters())) == {"weight", "bias"}
        assert bool((layer.weight[zero] == 0).all())  # pruned weights stayed pruned
        assert not torch.equal(layer.weight[~zero], old[~zero])  # the others were trained


def _filter_with_two_moderate_weights(neuron_support: bool, evidence_target: float) -> Conv2dTurboVBI:
    """Filters 0-2 carry large weights; filter 3 is near zero except two weights whose own collapsed evidence
    (found by bisection) is ``evidence_target``."""
    torch.manual_seed(0)
    config = TurboVBIConfig(p01=0.3, p11=0.7, p_start=0.5, neuron_support=neuron_support, p_neuron=0.01)
    layer = Conv2dTurboVBI.from_conv2d(nn.Conv2d(2, 4, 3), config)
    with torch.no_grad():
        layer.weight_scale.fill_(0.5)
        low, high = 1e-8, 1.0
        for _ in range(100):
            mid = math.sqrt(low * high)
            evidence = structured_posteriors(torch.tensor([mid], dtype=torch.float64), layer.gamma_pair())[2].item()
            low, high = (mid, high) if evidence < evidence_target else (low, mid)
        layer.weight_log_sigma2.fill_(-20)
        layer.weight_mu.normal_(0, 0.5)
        layer.weight_mu[3] = 1e-4
        layer.weight_mu[3, 0, 0, 0] = layer.weight_mu[3, 1, 2, 2] = math.sqrt(low)
        for _ in range(5):
            layer.turbo_update()
    return layer


def test_neuron_support_switches_a_weak_filter_off_as_a_whole():
    """Two weights with evidence +1.5 each keep filter 3 alive under the plain MRF; with the neuron level
    (p_neuron = 0.01: the row's total softplus evidence 2 x 1.7 < log 100) the filter's neuron goes off, all its
    weights are pruned and the structured path removes the filter; the strong filters are untouched."""
    plain = _filter_with_two_moderate_weights(False, 1.5)
    assert plain.weight_keep_mask()[3].sum() == 2 and not hasattr(plain, "neuron_log_odds")
    layer = _filter_with_two_moderate_weights(True, 1.5)
    keep = layer.weight_keep_mask()
    assert not keep[3].any() and layer.neuron_log_odds[3] < 0 and (layer.neuron_log_odds[:3] > 10).all()
    assert torch.equal(keep[:3], plain.weight_keep_mask()[:3])
    groups = layer.group_log_alpha() < layer.config.threshold
    assert groups.tolist() == [True, True, True, False]
    assert layer.bp_messages.shape == (5, 4, 18)
    strong = _filter_with_two_moderate_weights(True, 4.0)  # 2 x 4 > log 100: the evidence outweighs the prior
    assert strong.weight_keep_mask()[3].sum() == 2 and strong.neuron_log_odds[3] > 0


def test_state_dict_round_trip_with_neuron_support():
    config = TurboVBIConfig(neuron_support=True, p_neuron=0.05)
    layer = _layer(Conv2dTurboVBI, config, 2, 3, 3)
    for _ in range(4):
        layer.turbo_update()
    copy = Conv2dTurboVBI(2, 3, 3, config=config)
    copy.load_state_dict(layer.state_dict())
    for name in ("support_log_odds", "prior_log_odds", "bp_messages", "neuron_log_odds"):
        assert torch.equal(getattr(copy, name), getattr(layer, name)), name
    with pytest.raises(ValueError, match="p_neuron"):
        TurboVBIConfig(neuron_support=True, p_neuron=0.0)


def test_the_output_layer_gets_no_neuron_level_and_keeps_every_class(mnist_small):
    """The rows of the last layer are the classes: :func:`disable_output_neuron_level` finds it by a forward pass
    and runs plain module B there, so even a prohibitive neuron cost (50 nats per weight) cannot switch a class
    off, while it switches off the hidden layers' neurons. The prior's ``prepare`` hook does the same."""
    from bayescomp.methods import get_method
    from bayescomp.methods.base import RunContext
    from bayescomp.priors.turbo_vbi import disable_output_neuron_level

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 36, 16),
                          nn.ReLU(), nn.Linear(16, 10))
    config = TurboVBIConfig(neuron_support=True, p_neuron=0.5, neuron_cost=50.0)
    model = bayesify(dense, "turbo", config)
    assert disable_output_neuron_level(model, mnist_small.val.example()) == ["6"]
    assert [bool(model[i].neuron_level) for i in (0, 4, 6)] == [True, True, False]
    assert model[6].bp_messages.shape[0] == 4 and model[4].bp_messages.shape[0] == 5
    for index in (0, 4, 6):
        model[index].turbo_update()
    assert model[6].weight_keep_mask().any(dim=1).all()  # every class keeps weights
    for index in (0, 4):
        assert (model[index].neuron_log_odds < 0).all() and not model[index].weight_keep_mask().any()
    assert disable_output_neuron_level(model, mnist_small.val.example()) == []  # idempotent: nothing left to do
    ctx = RunContext(config=None, data=mnist_small, dense=dense, run_dir=None, settings=config)
    prepared = get_method("turbo").prepare(ctx)
    assert [bool(prepared[i].neuron_level) for i in (0, 4, 6)] == [True, True, False]


def test_a_neuron_cost_per_mac_charges_a_filter_for_its_output_positions(mnist_small):
    """``neuron_cost_per="mac"``: a row's price is cost x fan-in x output positions, the positions measured by a
    forward pass (24 x 24 for a 5x5 conv on MNIST, 1 for a Linear). The same cost that leaves the conv filters on
    when charged per weight (25 weights: 0.5 nats) switches every filter off when charged per MAC (288 nats),
    while the Linear layer's neurons are priced identically under both units. The prepare hook records them."""
    from bayescomp.methods import get_method
    from bayescomp.methods.base import RunContext
    from bayescomp.priors.turbo_vbi import disable_output_neuron_level, record_output_positions

    dense = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 36, 16),
                          nn.ReLU(), nn.Linear(16, 10))
    example = mnist_small.val.example()
    models = {}
    for unit in ("weight", "mac"):
        torch.manual_seed(0)
        config = TurboVBIConfig(neuron_support=True, p_neuron=0.5, neuron_cost=0.02, neuron_cost_per=unit)
        model = bayesify(dense, "turbo", config)
        assert record_output_positions(model, example) == {"0": 24 * 24, "4": 1, "6": 1}
        disable_output_neuron_level(model, example)
        for index in (0, 4):
            model[index].turbo_update()
        models[unit] = model
    by_weight, by_mac = models["weight"], models["mac"]
    assert by_mac[0].mrf().neuron_cost == pytest.approx(0.02 * 576)
    assert by_mac[0].mrf().neuron_log_odds(25) == pytest.approx(-0.02 * 25 * 576)  # logit 0.5 = 0
    assert by_weight[0].mrf().neuron_log_odds(25) == pytest.approx(-0.02 * 25)
    assert by_mac[4].mrf() == by_weight[4].mrf()
    assert torch.allclose(by_mac[4].neuron_log_odds, by_weight[4].neuron_log_odds)
    assert (by_weight[0].neuron_log_odds > 0).all() and by_weight[0].weight_keep_mask().flatten(1).any(1).all()
    assert (by_mac[0].neuron_log_odds < 0).all() and not by_mac[0].weight_keep_mask().any()
    ctx = RunContext(config=None, data=mnist_small, dense=dense, run_dir=None, settings=by_mac[0].config)
    prepared = get_method("turbo").prepare(ctx)
    assert [prepared[i].output_positions for i in (0, 4, 6)] == [576, 1, 1]
    own_loop = bayesify(dense, "turbo", by_mac[0].config)  # no prepare hook: the layers note it on each forward
    assert own_loop[0].output_positions == 1
    own_loop(example)
    assert own_loop[0].output_positions == 576 and own_loop[0].mrf() == by_mac[0].mrf()
    with pytest.raises(ValueError, match="neuron_cost_per"):
        TurboVBIConfig(neuron_cost_per="flop")


def test_a_neuron_cost_warm_up_raises_the_price_epoch_by_epoch(mnist_small):
    """``neuron_cost_warmup_epochs``: epoch e (from 1) is charged min(1, e / warm-up) of the cost, counted by the
    layers' own ``on_epoch_end`` and saved with them; a price that switches every filter off at once leaves them
    on in the first epoch of a long ramp. Without a warm-up the layer has no counter (old checkpoints load)."""
    from bayescomp.priors.turbo_vbi import disable_output_neuron_level, record_output_positions

    dense = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 36, 16),
                          nn.ReLU(), nn.Linear(16, 10))
    example = mnist_small.val.example()
    torch.manual_seed(0)
    config = TurboVBIConfig(neuron_support=True, p_neuron=0.5, neuron_cost=0.02, neuron_cost_per="mac",
                            neuron_cost_warmup_epochs=4)
    model = bayesify(dense, "turbo", config)
    record_output_positions(model, example)
    disable_output_neuron_level(model, example)
    conv = model[0]
    charged = []
    for _ in range(6):
        charged.append(conv.mrf().neuron_cost)
        conv.on_epoch_end()
    assert charged == pytest.approx([0.02 * 576 * share for share in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])
    copy = bayesify(dense, "turbo", config)
    disable_output_neuron_level(copy, example)
    copy.load_state_dict(model.state_dict())
    assert int(copy[0].epochs_done) == 6
    long_ramp = bayesify(dense, "turbo", replace(config, neuron_cost_warmup_epochs=1000))
    full = bayesify(dense, "turbo", replace(config, neuron_cost_warmup_epochs=0))
    for net in (long_ramp, full):
        record_output_positions(net, example)
        disable_output_neuron_level(net, example)
        net[0].turbo_update()
    assert (long_ramp[0].neuron_log_odds > 0).all() and long_ramp[0].weight_keep_mask().flatten(1).any(1).all()
    assert (full[0].neuron_log_odds < 0).all() and not full[0].weight_keep_mask().any()
    assert "epochs_done" not in dict(full.named_buffers(prefix="")) and not hasattr(full[0], "epochs_done")
    with pytest.raises(ValueError, match="neuron_cost_warmup_epochs"):
        TurboVBIConfig(neuron_cost_warmup_epochs=-1)


def _trained_small_cnn(data) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A one-conv CNN trained briefly on real MNIST (2,000 images), so its filters differ in importance."""
    torch.manual_seed(0)
    x, y = data.train.images.float() / 255.0, data.train.labels
    dense = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 36, 10))
    optimizer = torch.optim.Adam(dense.parameters(), 3e-3)
    for _ in range(4):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 100):
            batch = order[i:i + 100]
            optimizer.zero_grad()
            nn.functional.cross_entropy(dense(x[batch]), y[batch]).backward()
            optimizer.step()
    return dense, x, y


def _fisher_model(dense: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> nn.Module:
    """Turbo-VBI twin of ``dense`` with the Fisher neuron evidence, after one pass of training steps' backward
    passes over (x, y) in mini-batches of 250 (no optimiser step), and one Turbo iteration of its conv layer."""
    from bayescomp.priors.turbo_vbi import disable_output_neuron_level, set_train_examples

    config = TurboVBIConfig(neuron_support=True, p_neuron=0.5, neuron_evidence="fisher", update_every=0, **settings)
    model = bayesify(dense, "turbo", config)
    disable_output_neuron_level(model, x[:2])
    assert set_train_examples(model, len(y)) == 2
    model.train()
    for i in range(0, len(y), 250):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 250]), y[i:i + 250]).backward()
    assert int(model[0].fisher_examples) == len(y)
    model[0].turbo_update()
    return model


def test_fisher_neuron_evidence_estimates_what_removing_a_filter_costs(mnist_small):
    """``neuron_evidence="fisher"``: the evidence the training steps accumulate for each filter
    (N (E[delta²] / 2 - E[delta]))
    against an independent computation, the summed NLL of the plain network with that filter's weights zeroed
    minus the intact one's on the same 2,000 images. A second-order estimate of a whole filter's removal: it
    ranks the filters as the real loss does (Spearman >= 0.8) and lies within a few times of it (0.4-0.85x
    measured: the removal is large, the expansion local)."""
    from scipy.stats import spearmanr

    dense, x, y = _trained_small_cnn(mnist_small)
    model = _fisher_model(dense, x, y)
    estimate = model[0].neuron_data_evidence.clone()
    assert int(model[0].fisher_examples) == 0  # read at the Turbo iteration, a new window begins
    with torch.no_grad():
        intact = nn.functional.cross_entropy(dense(x), y, reduction="sum").item()
        actual = []
        for r in range(8):
            cut = copy.deepcopy(dense)
            cut[0].weight[r] = 0.0  # the bias stays: the compressed path folds it into the next layer
            actual.append(nn.functional.cross_entropy(cut(x), y, reduction="sum").item() - intact)
    actual = torch.tensor(actual)
    assert (actual > 0).all()
    assert spearmanr(estimate.numpy(), actual.numpy()).statistic >= 0.8
    ratio = estimate / actual
    assert 0.25 <= float(ratio.median()) <= 4.0 and float(ratio.min()) > 0.1


def test_fisher_evidence_keeps_the_filters_the_data_need_under_a_mac_price(mnist_small):
    """A MAC price of 288 nats per filter (0.02 x 25 weights x 576 positions) is beyond what these briefly
    trained filters' weights show, so with the weights' evidence alone every filter goes; with the data's
    evidence the filters whose removal costs the most stay on and the cheapest ones still go."""
    dense, x, y = _trained_small_cnn(mnist_small)
    settings = dict(neuron_cost=0.02, neuron_cost_per="mac")
    fisher = _fisher_model(dense, x, y, **settings)
    fisher[0].output_positions = 576
    fisher[0].reset_hyperparameters()  # the price depends on the positions: restart module B with them
    evidence = fisher[0].neuron_data_evidence
    on = fisher[0].neuron_log_odds > 0
    assert on[evidence.topk(2).indices].all() and not on[evidence.topk(2, largest=False).indices].any()
    weights_only = bayesify(dense, "turbo", replace(fisher[0].config, neuron_evidence="weights"))
    weights_only[0].output_positions = 576
    weights_only[0].reset_hyperparameters()
    assert not (weights_only[0].neuron_log_odds > 0).any()


def test_fisher_evidence_options_buffers_and_errors(mnist_small):
    """The option needs the neuron level and a training-set size; its buffers exist only when it is on (older
    checkpoints keep loading) and survive a state-dict round trip."""
    with pytest.raises(ValueError, match="neuron_evidence must be one of"):
        TurboVBIConfig(neuron_support=True, neuron_evidence="hessian")
    with pytest.raises(ValueError, match="needs neuron_support"):
        TurboVBIConfig(neuron_evidence="fisher")
    plain = _layer(LinearTurboVBI, TurboVBIConfig(neuron_support=True), 6, 4)
    assert "fisher_sum" not in plain.state_dict() and "neuron_data_evidence" not in plain.state_dict()
    layer = _layer(LinearTurboVBI, TurboVBIConfig(neuron_support=True, neuron_evidence="fisher", update_every=0),
                   6, 4)
    layer.train()
    out = layer(torch.randn(5, 6))
    out.square().mean().backward()
    assert int(layer.fisher_examples) == 5
    with pytest.raises(ValueError, match="set_train_examples"):
        layer.turbo_update()
    layer.train_examples.fill_(1000)
    layer.turbo_update()
    # independently: the loss mean(out²) has gradient 2 out / 20; example b's own is 5x that, and the row's
    # output without its weights is the bias
    with torch.no_grad():
        delta = 5 * (out - layer.bias_mu) * (2 * out / out.numel())
        expected = 1000 * (0.5 * delta.square().mean(0) - delta.mean(0))
    assert torch.allclose(layer.neuron_data_evidence, expected, rtol=1e-5, atol=1e-4)
    twin = _layer(LinearTurboVBI, layer.config, 6, 4)
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(twin.neuron_data_evidence, layer.neuron_data_evidence) and int(twin.train_examples) == 1000
    layer.eval()
    layer(torch.randn(5, 6))  # evaluation passes add nothing
    assert int(layer.fisher_examples) == 0


def test_the_prepare_hook_primes_the_fisher_evidence_before_training(mnist_small):
    """With ``neuron_evidence="fisher"`` the method's prepare hook sets N and gives the neurons a first data
    estimate from 20 mini-batches, so the first Turbo iteration does not meet the price without it."""
    from bayescomp.methods import get_method
    from bayescomp.methods.base import RunContext

    dense = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 36, 10))
    config = TurboVBIConfig(neuron_support=True, p_neuron=0.5, neuron_evidence="fisher")
    ctx = RunContext(config=None, data=mnist_small, dense=dense, run_dir=None, settings=config)
    model = get_method("turbo").prepare(ctx)
    assert int(model[0].train_examples) == len(mnist_small.train)
    assert (model[0].neuron_data_evidence != 0).all() and int(model[0].fisher_examples) == 0
    assert all(p.grad is None for p in model.parameters())
    assert not bool(model[4].neuron_level)  # the classes: no neuron level, no data evidence either


@torch.no_grad()
def test_prune_threshold_moves_the_deployed_cut_and_training_keeps_its_own():
    """``prune_threshold`` decides the deployed weights (-logit pi~ below it, counted here from the support
    log-odds); ``train_clip`` in training still cuts at ``threshold``; the method reads it after training only."""
    from bayescomp.methods import get_method

    layer = LinearTurboVBI(6, 4, config=TurboVBIConfig(train_clip=True, prune_threshold=-1))
    g = torch.Generator().manual_seed(3)
    layer.support_log_odds.copy_(torch.randn(layer.support_log_odds.shape, generator=g) * 3)
    stat = -layer.support_log_odds.reshape(layer.weight_mu.shape)
    assert 0 < int((stat < -1.0).sum()) < int((stat < 0.0).sum())  # weights between the two cuts exist
    assert torch.equal(layer.weight_keep_mask(), stat < -1.0)
    assert torch.equal(layer._train_keep_mask(), stat < 0.0)
    mean, variance = layer._train_weights()
    assert torch.equal(mean != 0, (stat < 0.0) & (layer.weight_mu != 0))
    plain = layer.to_plain()
    assert torch.equal(plain.weight != 0, (stat < -1.0) & (layer.weight_mu != 0))
    assert TurboVBIConfig().deploy_threshold == 0.0 and TurboVBIConfig(prune_threshold=2).deploy_threshold == 2.0
    assert get_method("turbo").post_training_settings == ("prune_threshold",)


def test_the_search_removes_whole_groups_beyond_the_weight_mask_in_the_posteriors_order(mnist_small):
    """With ``thresholds="search"`` a per-weight posterior's tolerance means something: input neurons go in the order
    of their group statistic (the smallest -logit pi~ of their weights, computed here from the support log-odds) as
    far as the validation error allows, beyond the ones the weight mask empties, and the weight mask's zeros stay
    zeros (non-zeros counted independently)."""
    from bayescomp import bayesify, create_model
    from bayescomp.compress import CompressConfig, compress
    from bayescomp.priors import bayesian_layers

    torch.manual_seed(0)
    model = bayesify(create_model("lenet300"), "turbo", TurboVBIConfig())
    layers = [layer for _, layer in bayesian_layers(model)]
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in layers:
            layer.support_log_odds.copy_(torch.randn(layer.support_log_odds.shape, generator=g) * 4 + 9)
            layer.steps.fill_(1)  # a posterior as training leaves it (no never-updated warning)
    neg_logits = [-layer.support_log_odds.reshape(layer.weight_mu.shape) for layer in layers]
    stats = [neg_logit.amin(dim=0) for neg_logit in neg_logits]
    masked_groups = [int((s < 0).sum()) for s in stats]  # inputs with a weight the mask keeps
    unfolded = CompressConfig(fold_empty_units=False)
    default = compress(model, None, unfolded)
    assert default.architecture_kept == masked_groups
    searched = compress(model, mnist_small.val, replace(unfolded, thresholds="search", tolerance_pct=100.0))
    assert all(s <= m for s, m in zip(searched.architecture_kept, masked_groups))
    assert sum(searched.architecture_kept) < sum(masked_groups)  # whole groups the mask kept went too
    nonzero = 0
    for layer, neg_logit, stat, keep_in, keep_out in zip(layers, neg_logits, stats, searched.plan.in_keep,
                                                          searched.plan.out_keep):
        if (~keep_in).any() and keep_in.any():
            assert stat[keep_in].max() < stat[~keep_in].min()  # the least supported groups went first
        weight_keep = neg_logit < 0
        nonzero += int((weight_keep & (layer.weight_mu != 0))[keep_out][:, keep_in].sum())
    assert searched.weights_nonzero == nonzero
