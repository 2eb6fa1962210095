"""Every registered prior: KL against Monte Carlo, local reparameterisation against weight sampling,
deterministic mode, drop-in signature. Iterates the registry so a new prior is tested the day it lands."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.objective import collect_kl, variational_loss
from bayescomp.priors import PRIORS, Conv2dGroupNJ, LinearGroupNJ
from bayescomp.priors.group_nj import kl_log_uniform_approx, kl_standard_normal

EULER_GAMMA = 0.5772156649015329


def _posterior_like(layer, seed=0):
    """Give a layer a non-trivial posterior (various log alphas) so tests exercise the whole range."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.randn(layer.weight_mu.shape, generator=g) * 0.3)
        layer.weight_log_sigma2.copy_(torch.empty(layer.weight_mu.shape).uniform_(-6, -2, generator=g))
        layer.z_mu.copy_(torch.empty(layer.z_mu.shape).uniform_(0.3, 1.5, generator=g))
        layer.z_log_sigma2.copy_(torch.empty(layer.z_mu.shape).uniform_(-5, 0, generator=g))
        layer.bias_mu.copy_(torch.randn(layer.bias_mu.shape, generator=g) * 0.1)
        layer.bias_log_sigma2.copy_(torch.empty(layer.bias_mu.shape).uniform_(-6, -3, generator=g))
    return layer


@pytest.mark.parametrize("log_alpha", [-6.0, -3.0, -1.0, 0.0, 1.5, 3.0])
def test_log_uniform_kl_approximation_matches_monte_carlo(log_alpha):
    """-KL(N(mu, alpha mu^2) || log-uniform) = 0.5 log alpha - E log|1 + sqrt(alpha) eps| + C, C chosen so that
    -KL -> 0 as alpha -> inf, i.e. C = E log|eps| = -(gamma + log 2)/2 (Molchanov et al. 2017, Sec. 4.2)."""
    n = 2_000_000
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    values = torch.log(torch.abs(1.0 + math.exp(0.5 * log_alpha) * eps))
    constant = -(EULER_GAMMA + math.log(2.0)) / 2.0
    neg_kl_mc = 0.5 * log_alpha - values.mean().item() + constant
    stderr = values.std().item() / math.sqrt(n)
    approx = kl_log_uniform_approx(torch.tensor(log_alpha, dtype=torch.float64)).item()
    # the published approximation has a maximum absolute error of about 0.01 nats (fit over log alpha in [-10, 10])
    assert abs(approx - (-neg_kl_mc)) < 0.012 + 5 * stderr


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(5, generator=g, dtype=torch.float64)
    log_sigma2 = torch.empty(5, dtype=torch.float64).uniform_(-3, 1, generator=g)
    n = 400_000
    samples = mu + (0.5 * log_sigma2).exp() * torch.randn(n, 5, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * log_sigma2).exp())
    p = torch.distributions.Normal(0.0, 1.0)
    terms = (q.log_prob(samples) - p.log_prob(samples)).sum(1)
    assert abs(kl_standard_normal(mu, log_sigma2).item() - terms.mean().item()) < 5 * terms.std().item() / math.sqrt(n)


def test_conditional_weight_kl_is_independent_of_z():
    """KL(N(z mu, z^2 s^2) || N(0, z^2)) does not depend on z: checked by Monte Carlo at two values of z."""
    g = torch.Generator().manual_seed(3)
    mu, s = torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    n = 400_000
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    estimates = []
    for z in (0.3, 2.0):
        w = z * (mu + s * eps)
        q = torch.distributions.Normal(z * mu, z * s)
        p = torch.distributions.Normal(0.0, z)
        estimates.append((q.log_prob(w) - p.log_prob(w)).mean().item())
    closed = kl_standard_normal(mu.view(1), (2 * s.log()).view(1)).item()
    for est in estimates:
        assert abs(est - closed) < 0.01


def test_gnj_layer_kl_is_sum_of_parts():
    prior = "gnj"  # the other priors test their own KL decompositions (tests/test_group_hs.py, test_sparse_vd.py)
    layer = _posterior_like(PRIORS[prior].from_linear(nn.Linear(7, 4), PRIORS[prior].config_cls()))
    expected = (kl_log_uniform_approx(layer.group_log_alpha()).sum()
                + kl_standard_normal(layer.weight_mu, layer.weight_log_sigma2)
                + kl_standard_normal(layer.bias_mu, layer.bias_log_sigma2))
    torch.testing.assert_close(layer.kl_divergence(), expected)


def _sampled_linear(layer: LinearGroupNJ, x: torch.Tensor, n: int, g) -> torch.Tensor:
    """Sample z and W explicitly from the posterior and apply them (the slow, direct way)."""
    outs = []
    for _ in range(n):
        z = layer.z_mu + (0.5 * layer.z_log_sigma2).exp() * torch.randn(layer.z_mu.shape, generator=g)
        w = z[None, :] * (layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp()
                          * torch.randn(layer.weight_mu.shape, generator=g))
        b = layer.bias_mu + (0.5 * layer.bias_log_sigma2).exp() * torch.randn(layer.bias_mu.shape, generator=g)
        outs.append(x @ w.T + b)
    return torch.stack(outs)


def _check_moments(direct: torch.Tensor, local: torch.Tensor):
    n = direct.shape[0]
    mean_d, mean_l = direct.mean(0), local.mean(0)
    var_d, var_l = direct.var(0), local.var(0)
    se_mean = torch.sqrt((var_d + var_l) / n)
    assert torch.all((mean_d - mean_l).abs() < 5 * se_mean + 1e-6)
    # variance of a sample variance ~ 2 sigma^4 / n for near-Gaussian outputs; allow 6 standard errors
    se_var = torch.sqrt(2 * (var_d**2 + var_l**2) / n)
    assert torch.all((var_d - var_l).abs() < 6 * se_var + 1e-6)


@torch.no_grad()
def test_linear_local_reparameterisation_matches_weight_sampling():
    torch.manual_seed(0)
    layer = _posterior_like(LinearGroupNJ(6, 3))
    x = torch.randn(1, 6)
    g = torch.Generator().manual_seed(5)
    direct = _sampled_linear(layer, x, 20000, g)[:, 0]
    local = layer(x.expand(20000, 6))
    _check_moments(direct, local)


@torch.no_grad()
def test_conv_local_reparameterisation_matches_weight_sampling():
    torch.manual_seed(0)
    layer = _posterior_like(Conv2dGroupNJ(2, 3, 3, padding=1))
    x = torch.randn(1, 2, 4, 4)
    g = torch.Generator().manual_seed(6)
    n = 10000
    direct = []
    for _ in range(n):
        z = layer.z_mu + (0.5 * layer.z_log_sigma2).exp() * torch.randn(3, generator=g)
        w = layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp() * torch.randn(layer.weight_mu.shape, generator=g)
        b = layer.bias_mu + (0.5 * layer.bias_log_sigma2).exp() * torch.randn(3, generator=g)
        direct.append(torch.nn.functional.conv2d(x, w, b, padding=1)[0] * z[:, None, None])
    direct = torch.stack(direct)
    local = layer(x.expand(n, 2, 4, 4))
    _check_moments(direct, local)


@torch.no_grad()
def test_marginal_weight_variance_matches_sampling():
    torch.manual_seed(0)
    layer = _posterior_like(LinearGroupNJ(4, 3))
    g = torch.Generator().manual_seed(7)
    n = 200_000
    z = layer.z_mu + (0.5 * layer.z_log_sigma2).exp() * torch.randn(n, 1, 4, generator=g)
    w = z * (layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp() * torch.randn(n, 3, 4, generator=g))
    torch.testing.assert_close(w.var(0), layer.posterior_weight_variance(), rtol=0.03, atol=1e-6)
    torch.testing.assert_close(w.mean(0), layer.posterior_mean_weight(), rtol=0.0,
                               atol=float(5 * w.std(0).max() / math.sqrt(n)))


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_bayesify_keeps_drop_in_signature_and_deterministic_mode(prior):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = bayesify(plain, prior)
    x = torch.rand(8, 1, 8, 8)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (8, 5)
    # plain model untouched; deterministic mode at initialisation ~ the plain model (z_mu ~ 1 +- 0.01)
    assert type(plain[0]) is nn.Conv2d
    from bayescomp.priors import deterministic_mode
    with deterministic_mode(model):
        det = model(x)
        assert torch.equal(det, model(x))  # no noise in deterministic mode
    torch.testing.assert_close(det, plain(x), rtol=0.1, atol=0.05)
    # noise is never kept in registered buffers: forward passes (noisy or not) leave every buffer as it was
    # (buffers hold only state of closed-form steps that run between optimiser steps, e.g. Turbo-VBI's support)
    before = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    model(x), model(x)
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())


def test_bayesify_rejects_unknown_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4))
    with pytest.raises(TypeError, match="1.*LSTM"):
        bayesify(model, "gnj")
    with pytest.raises(ValueError, match="unknown method"):
        bayesify(nn.Sequential(nn.Linear(2, 2)), "nope")


def test_objective_scales_kl_by_training_set_size():
    torch.manual_seed(0)
    model = bayesify(nn.Sequential(nn.Linear(5, 3)), "gnj")
    logits, targets = model(torch.randn(4, 5)), torch.tensor([0, 1, 2, 0])
    loss, nll, kl = variational_loss(logits, targets, model, n_train=1000)
    torch.testing.assert_close(kl, collect_kl(model))
    torch.testing.assert_close(loss, nll + kl / 1000)
    loss_half, _, _ = variational_loss(logits, targets, model, n_train=1000, kl_scale=0.5)
    torch.testing.assert_close(loss_half, nll + 0.5 * kl / 1000)


def test_standard_normal_kl_gradient_matches_autograd():
    g = torch.Generator().manual_seed(9)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    log_sigma2 = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(kl_standard_normal, (mu, log_sigma2))
    reference = 0.5 * torch.sum(-log_sigma2 + log_sigma2.exp() + mu.pow(2) - 1.0)
    torch.testing.assert_close(kl_standard_normal(mu, log_sigma2), reference)
