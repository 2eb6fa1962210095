"""BC-GHS: every KL against Monte Carlo, the half-Cauchy decomposition by sampling, local reparameterisation and
the marginal variance against explicit sampling of s, z~ and w~."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.priors import Conv2dGroupHS, GroupHSConfig, LinearGroupHS, deterministic_mode
from bayescomp.priors.group_hs import kl_lognormal_gamma, kl_lognormal_invgamma


def _mc_kl(q: torch.distributions.Distribution, p: torch.distributions.Distribution, n: int = 400_000, seed: int = 0):
    torch.manual_seed(seed)
    x = q.sample((n,))
    terms = q.log_prob(x) - p.log_prob(x)
    return terms.mean().item(), terms.std().item() / math.sqrt(n)


@pytest.mark.parametrize("mu,log_sigma2,rate", [(0.0, -2.0, 1.0), (-3.0, 0.5, 1.0), (-20.0, -1.0, 1e10), (1.5, -4.0, 1.0)])
def test_lognormal_gamma_kl_matches_monte_carlo(mu, log_sigma2, rate):
    sigma = math.exp(0.5 * log_sigma2)
    q = torch.distributions.LogNormal(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    p = torch.distributions.Gamma(torch.tensor(0.5, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64))
    estimate, se = _mc_kl(q, p)
    closed = kl_lognormal_gamma(torch.tensor(mu, dtype=torch.float64), torch.tensor(log_sigma2, dtype=torch.float64),
                                0.5, math.log(rate)).item()
    assert abs(closed - estimate) < 5 * se + 1e-3


@pytest.mark.parametrize("mu,log_sigma2", [(0.0, -2.0), (23.0, -9.0), (-2.0, 0.3), (4.0, -1.0)])
def test_lognormal_invgamma_kl_matches_monte_carlo(mu, log_sigma2):
    sigma = math.exp(0.5 * log_sigma2)
    q = torch.distributions.LogNormal(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    # InvGamma(a, scale b) is the law of 1/X for X ~ Gamma(a, rate b): log density via the change of variables
    gamma = torch.distributions.Gamma(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))

    class InvGamma:
        @staticmethod
        def log_prob(x):
            return gamma.log_prob(1.0 / x) - 2.0 * torch.log(x)

    estimate, se = _mc_kl(q, InvGamma())
    closed = kl_lognormal_invgamma(torch.tensor(mu, dtype=torch.float64),
                                   torch.tensor(log_sigma2, dtype=torch.float64), 0.5, 0.0).item()
    assert abs(closed - estimate) < 5 * se + 1e-3


def test_gamma_times_inverse_gamma_is_half_cauchy():
    """s = sqrt(s_a s_b) with s_a ~ Gamma(1/2, rate 1/tau0²), s_b ~ InvGamma(1/2, 1) has the C+(0, tau0) law:
    compare empirical quantiles with tau0 tan(pi p / 2)."""
    torch.manual_seed(1)
    tau0, n = 0.3, 400_000
    s_a = torch.distributions.Gamma(0.5, 1.0 / tau0**2).sample((n,)).double()
    s_b = 1.0 / torch.distributions.Gamma(0.5, 1.0).sample((n,)).double()
    s = torch.sqrt(s_a * s_b)
    for p in (0.1, 0.25, 0.5, 0.75, 0.9):
        expected = tau0 * math.tan(math.pi * p / 2)
        assert abs(torch.quantile(s, p).item() / expected - 1.0) < 0.02


def _posterior_like(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.randn(layer.weight_mu.shape, generator=g) * 0.5)
        layer.weight_log_sigma2.copy_(torch.empty(layer.weight_mu.shape).uniform_(-5, -2, generator=g))
        layer.scale_global_mu.copy_(torch.tensor([-3.0, 1.0]))
        layer.scale_global_log_sigma2.copy_(torch.tensor([-3.0, -2.0]))
        layer.scale_group_mu.copy_(torch.empty(layer.scale_group_mu.shape).uniform_(-1, 2, generator=g))
        layer.scale_group_log_sigma2.copy_(torch.empty(layer.scale_group_mu.shape).uniform_(-4, -1, generator=g))
        layer.bias_mu.copy_(torch.randn(layer.bias_mu.shape, generator=g) * 0.1)
        layer.bias_log_sigma2.copy_(torch.empty(layer.bias_mu.shape).uniform_(-6, -3, generator=g))
    return layer


def _sample_scales(layer, n: int, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw s (n, 1) and z~ (n, G) directly from the four log-normal factors."""
    gm, gs = layer.scale_global_mu, (0.5 * layer.scale_global_log_sigma2).exp()
    lm, ls = layer.scale_group_mu, (0.5 * layer.scale_group_log_sigma2).exp()
    groups = lm.shape[1]
    s_a = torch.exp(gm[0] + gs[0] * torch.randn(n, 1, generator=g))
    s_b = torch.exp(gm[1] + gs[1] * torch.randn(n, 1, generator=g))
    a = torch.exp(lm[0] + ls[0] * torch.randn(n, groups, generator=g))
    b = torch.exp(lm[1] + ls[1] * torch.randn(n, groups, generator=g))
    return torch.sqrt(s_a * s_b), torch.sqrt(a * b)


def _check_moments(direct: torch.Tensor, local: torch.Tensor):
    n = direct.shape[0]
    se_mean = torch.sqrt((direct.var(0) + local.var(0)) / n)
    assert torch.all((direct.mean(0) - local.mean(0)).abs() < 5 * se_mean + 1e-6)
    # log-normal scales make the outputs heavy-tailed; compare standard deviations with a relative tolerance
    torch.testing.assert_close(local.std(0), direct.std(0), rtol=0.05, atol=1e-5)


@torch.no_grad()
def test_kl_is_the_sum_of_the_closed_forms():
    layer = _posterior_like(LinearGroupHS(5, 3, config=GroupHSConfig(tau0=1e-3)))
    gm, gl, lm, ll = (layer.scale_global_mu, layer.scale_global_log_sigma2, layer.scale_group_mu,
                      layer.scale_group_log_sigma2)
    q = torch.distributions
    global_mc, global_se = _mc_kl(q.LogNormal(gm[0].double(), (0.5 * gl[0]).exp().double()), q.Gamma(0.5, 1e6))
    expected = (kl_lognormal_gamma(gm[0], gl[0], 0.5, math.log(1e6)) + kl_lognormal_invgamma(gm[1], gl[1], 0.5, 0.0)
                + kl_lognormal_gamma(lm[0], ll[0], 0.5, 0.0).sum() + kl_lognormal_invgamma(lm[1], ll[1], 0.5, 0.0).sum()
                + 0.5 * torch.sum(-layer.weight_log_sigma2 + layer.weight_log_sigma2.exp() + layer.weight_mu**2 - 1)
                + 0.5 * torch.sum(-layer.bias_log_sigma2 + layer.bias_log_sigma2.exp() + layer.bias_mu**2 - 1))
    torch.testing.assert_close(layer.kl_divergence(), expected)
    # and the global term really is KL against Gamma(1/2, rate 1/tau0²) (tau0 = 1e-3 -> rate 1e6)
    assert abs(global_mc - kl_lognormal_gamma(gm[0], gl[0], 0.5, math.log(1e6)).item()) < 5 * global_se + 1e-3


@torch.no_grad()
def test_linear_local_reparameterisation_matches_explicit_sampling():
    torch.manual_seed(0)
    layer = _posterior_like(LinearGroupHS(6, 3))
    x = torch.randn(1, 6)
    g = torch.Generator().manual_seed(5)
    n = 40_000
    s, zt = _sample_scales(layer, n, g)
    z = s * zt
    w = z[:, None, :] * (layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp() * torch.randn(n, 3, 6, generator=g))
    b = layer.bias_mu + (0.5 * layer.bias_log_sigma2).exp() * torch.randn(n, 3, generator=g)
    direct = torch.einsum("noi,i->no", w, x[0]) + b
    local = layer(x.expand(n, 6))
    _check_moments(direct, local)


@torch.no_grad()
def test_conv_local_reparameterisation_matches_explicit_sampling():
    torch.manual_seed(0)
    layer = _posterior_like(Conv2dGroupHS(2, 3, 3, padding=1))
    x = torch.randn(1, 2, 4, 4)
    g = torch.Generator().manual_seed(6)
    n = 40_000
    s, zt = _sample_scales(layer, n, g)
    z = s * zt
    # the convolution as a matrix product on unfolded patches, with one weight sample per row
    patches = torch.nn.functional.unfold(x, 3, padding=1)[0]  # (2*3*3, 16)
    w = layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp() * torch.randn(n, 3, 2, 3, 3, generator=g)
    b = layer.bias_mu + (0.5 * layer.bias_log_sigma2).exp() * torch.randn(n, 3, generator=g)
    direct = (torch.einsum("nof,fp->nop", w.flatten(2), patches) + b[:, :, None]) * z[:, :, None]
    local = layer(x.expand(n, 2, 4, 4))
    _check_moments(direct.flatten(1), local.flatten(1))


@torch.no_grad()
def test_marginal_variance_and_point_estimates_match_sampling():
    torch.manual_seed(0)
    layer = _posterior_like(LinearGroupHS(4, 3))
    g = torch.Generator().manual_seed(7)
    n = 400_000
    s, zt = _sample_scales(layer, n, g)
    z = (s * zt)[:, None, :]
    w = z * (layer.weight_mu + (0.5 * layer.weight_log_sigma2).exp() * torch.randn(n, 3, 4, generator=g))
    torch.testing.assert_close(layer.posterior_weight_variance(), w.var(0), rtol=0.06, atol=1e-6)
    torch.testing.assert_close(layer.posterior_mean_weight(), w.mean(0), rtol=0.02, atol=1e-4)
    # the median point estimate is mu_ij times the median of z_i
    layer.config = GroupHSConfig(point_estimate="median")
    median_z = (s * zt).median(0).values
    torch.testing.assert_close(layer.posterior_mean_weight(), layer.weight_mu * median_z, rtol=0.02, atol=1e-5)


@torch.no_grad()
def test_pruning_statistics():
    layer = _posterior_like(LinearGroupHS(5, 2))
    m, v = layer.log_scale_moments()
    torch.testing.assert_close(layer.group_log_alpha(), -m)
    layer.config = GroupHSConfig(prune_statistic="log_alpha")
    g = torch.Generator().manual_seed(8)
    s, zt = _sample_scales(layer, 400_000, g)
    z = s * zt
    empirical = torch.log(z.var(0) / z.mean(0) ** 2)
    torch.testing.assert_close(layer.group_log_alpha(), empirical, rtol=0.0, atol=0.1)


def test_initial_model_equals_pretrained_and_options_are_validated():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    for tau0 in (1e-5, 1.0):
        model = bayesify(plain, "ghs", {"tau0": tau0})
        x = torch.rand(3, 1, 8, 8)
        with deterministic_mode(model):
            torch.testing.assert_close(model(x), plain(x), rtol=0.05, atol=0.02)
    with pytest.raises(ValueError, match="point_estimate"):
        GroupHSConfig(point_estimate="best")
    with pytest.raises(ValueError, match="tau0"):
        GroupHSConfig(tau0=0.0)


def test_training_shrinks_unneeded_groups():
    """Only 3 of 20 inputs carry the label: after training, those 3 have the largest scales E[log z]."""
    torch.manual_seed(0)
    n = 2000
    x = torch.randn(n, 20)
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).long()
    model = bayesify(nn.Sequential(nn.Linear(20, 2)), "ghs")
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    from bayescomp.objective import variational_loss

    for step in range(400):
        idx = torch.randint(0, n, (128,))
        loss, _, _ = variational_loss(model(x[idx]), y[idx], model, n_train=n)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model[0].apply_constraints()
    stat = model[0].group_log_alpha().detach()
    assert set(torch.argsort(stat)[:3].tolist()) == {0, 1, 2}
    assert stat[3:].min() > stat[:3].max() + 1.0
