"""``weight_sampling="batch"`` (one weight draw per mini-batch) against autograd, the unfused ops, and the exact
moments and expected-loss gradient of the posterior (BC-GNJ and BC-GHS)."""

from __future__ import annotations

import pytest
import torch

from bayescomp.priors import PRIORS
from bayescomp.priors.fused import draw_weights
from bayescomp.priors.group_nj import GroupNJConfig, LinearGroupNJ
from tests.test_fused import _step

GROUP_PRIORS = ("gnj", "ghs")


def test_draw_weights_gradients_match_finite_differences_in_float64():
    torch.manual_seed(0)
    mu = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    log_s2 = (torch.randn(4, 3, dtype=torch.float64) - 1).requires_grad_()
    eps = torch.randn(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, ls: draw_weights(m, ls, ls.exp(), eps), (mu, log_s2), atol=1e-6)


def _layer(prior: str, kind: str, z_sampling: str):
    config = PRIORS[prior].config_cls(z_sampling=z_sampling, weight_sampling="batch", init_log_sigma2=-3.0)
    torch.manual_seed(3)
    if kind == "linear":
        return PRIORS[prior].from_linear(torch.nn.Linear(7, 5), config), torch.randn(16, 7)
    return PRIORS[prior].from_conv2d(torch.nn.Conv2d(3, 5, 3, padding=1), config), torch.randn(4, 3, 6, 6)


@pytest.mark.parametrize("prior", GROUP_PRIORS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("z_sampling", ["example", "batch"])
def test_shared_draw_fused_equals_autograd_ops_with_the_same_noise(prior, kind, z_sampling):
    layer, x = _layer(prior, kind, z_sampling)
    out_f, gx_f, grads_f = _step(layer, x, fused=True)
    out_u, gx_u, grads_u = _step(layer, x, fused=False)
    assert torch.allclose(out_f, out_u, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gx_f, gx_u, rtol=1e-4, atol=1e-5)
    assert grads_f.keys() == grads_u.keys() and "weight_log_sigma2" in grads_f
    for name in grads_f:
        scale = grads_u[name].abs().max().clamp_min(1.0)
        assert (grads_f[name] - grads_u[name]).abs().max() <= 1e-5 * scale, name


def _gnj(weight_sampling: str, z_sampling: str) -> LinearGroupNJ:
    torch.manual_seed(5)
    layer = LinearGroupNJ(4, 3, config=GroupNJConfig(weight_sampling=weight_sampling, z_sampling=z_sampling))
    with torch.no_grad():
        layer.weight_log_sigma2.uniform_(-3.0, -1.0)
        layer.z_log_sigma2.uniform_(-2.5, -1.0)
        layer.bias_mu.normal_()
        layer.bias_log_sigma2.fill_(-2.0)
    return layer.double()


def _exact_moments(layer: LinearGroupNJ, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of each pre-activation under q (computed from the formulas, no sampling):
    m = x (z_mu mu)^T + b, v = x² ((z_mu² + z_var) sigma² + z_var mu²)^T + b_var."""
    z_var = layer.z_log_sigma2.exp()
    w_var = layer.weight_log_sigma2.exp()
    mean = x @ (layer.weight_mu * layer.z_mu).T + layer.bias_mu
    var = x.square() @ ((layer.z_mu.square() + z_var) * w_var + z_var * layer.weight_mu.square()).T
    return mean, var + layer.bias_log_sigma2.exp()


def _exact_cross_covariance(layer: LinearGroupNJ, x: torch.Tensor, weight_sampling: str,
                            z_sampling: str) -> torch.Tensor:
    """Cov(b_0j, b_1j) of two examples' pre-activations: the noise they share. A shared weight draw shares
    Var(w_ij) = (z_mu² + z_var) sigma² + z_var mu² and the bias variance; local sampling with one z per batch
    shares only the z part, z_var mu²; local sampling with z per example shares nothing."""
    z_var, w_var, mu2 = layer.z_log_sigma2.exp(), layer.weight_log_sigma2.exp(), layer.weight_mu.square()
    if weight_sampling == "batch":
        shared = (layer.z_mu.square() + z_var) * w_var + z_var * mu2 if z_sampling == "batch" else None
        if shared is None:  # z per example: the draws share w~ only, E[z_0 z_1] = z_mu²
            shared = layer.z_mu.square() * w_var
        return (x[0] * x[1]) @ shared.T + layer.bias_log_sigma2.exp()
    if z_sampling == "batch":
        return (x[0] * x[1]) @ (z_var * mu2).T
    return torch.zeros(layer.weight_mu.shape[0], dtype=x.dtype)


@pytest.mark.parametrize("z_sampling", ["example", "batch"])
@pytest.mark.parametrize("weight_sampling", ["batch", "local"])
def test_each_estimator_has_the_posterior_marginals_and_its_own_coupling(weight_sampling, z_sampling):
    """Monte Carlo over 6,000 steps: each pre-activation's mean and variance match the exact posterior moments
    for every estimator, and the covariance between two examples of a batch matches what the estimator shares
    (the source of the difference in gradient variance the docstring describes)."""
    x = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.2, 1.5, -1.0, 1.0]], dtype=torch.float64)
    layer = _gnj(weight_sampling, z_sampling)
    torch.manual_seed(7)
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(6000)])  # (S, 2, 3)
        mean, var = _exact_moments(layer, x)
        cross = _exact_cross_covariance(layer, x, weight_sampling, z_sampling)
    n = draws.shape[0]
    assert ((draws.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert torch.allclose(draws.var(0), var, rtol=0.12)
    centred = draws - draws.mean(0)
    sampled_cross = (centred[:, 0] * centred[:, 1]).sum(0) / (n - 1)
    assert ((sampled_cross - cross).abs() <= 5 * (var[0] * var[1] / n).sqrt()).all(), (sampled_cross, cross)
    if weight_sampling == "batch":  # the coupling is material here, not a rounding of zero
        assert (cross.abs() > 10 * (var[0] * var[1] / n).sqrt()).any()


def test_shared_draw_gradient_is_unbiased_for_the_expected_loss():
    """The average gradient of sum(b²) over 4,000 shared draws equals the exact gradient of its expectation
    sum(m² + v) (autograd through the closed-form moments), within 5 standard errors, for every parameter."""
    layer = _gnj("batch", "example")
    x = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.2, 1.5, -1.0, 1.0], [0.7, 0.1, 0.4, -2.0]], dtype=torch.float64)
    params = dict(layer.named_parameters())
    mean, var = _exact_moments(layer, x)
    exact = torch.autograd.grad((mean.square() + var).sum(), list(params.values()))
    torch.manual_seed(8)
    samples = []
    for _ in range(4000):
        grads = torch.autograd.grad(layer(x).square().sum(), list(params.values()))
        samples.append(torch.cat([g.reshape(-1) for g in grads]))
    samples = torch.stack(samples)
    exact_flat = torch.cat([g.reshape(-1) for g in exact])
    se = samples.std(0) / samples.shape[0] ** 0.5
    z_scores = (samples.mean(0) - exact_flat).abs() / se.clamp_min(1e-12)
    assert z_scores.max() < 5, z_scores.max()


def test_unknown_weight_sampling_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="weight_sampling must be one of.*'batch'"):
        GroupNJConfig(weight_sampling="global")
    with pytest.raises(ValueError, match="weight_sampling"):
        PRIORS["ghs"].config_cls(weight_sampling="")


@pytest.mark.parametrize("prior", GROUP_PRIORS)
def test_shared_draw_trains_and_evaluates_like_any_layer(prior):
    """A few Adam steps with the shared draw lower a regression loss; evaluation (posterior mean) is unaffected by
    the option (same parameters, same deterministic output)."""
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = x @ torch.randn(6, 2)
    spec = PRIORS[prior]
    layer = spec.from_linear(torch.nn.Linear(6, 2), spec.config_cls(weight_sampling="batch"))
    twin = spec.from_linear(torch.nn.Linear(6, 2), spec.config_cls())
    twin.load_state_dict(layer.state_dict())
    for m in (layer, twin):
        m.deterministic = True
    assert torch.equal(layer(x), twin(x))
    layer.deterministic = False
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = (layer(x) - y).square().mean() + layer.kl_divergence() / 1e4
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
