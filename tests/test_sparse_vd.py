"""Sparse VD (Molchanov et al. 2017): KL against Monte Carlo, local reparameterisation against weight sampling,
per-weight mask semantics, train_clip, and that training on a toy problem prunes exactly the useless inputs.

Reference quantities are computed here from the raw parameters (theta, log sigma²) with independent formulas,
never through the layer's own helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescomp import bayesify
from bayescomp.objective import variational_loss
from bayescomp.priors import PRIORS, Conv2dSparseVD, LinearSparseVD, SparseVDConfig, bayesian_layers

EULER_GAMMA = 0.5772156649015329


def _log_alpha(layer) -> torch.Tensor:
    """Independent log alpha: log(sigma² / (theta² + 1e-8)) in float64, clipped to [-8, 8]."""
    theta = layer.weight_mu.detach().double()
    sigma2 = layer.weight_log_sigma2.detach().double().exp()
    return torch.log(sigma2 / (theta**2 + 1e-8)).clamp(-8.0, 8.0)


def _set_posterior(layer, theta: torch.Tensor, log_alpha: torch.Tensor) -> None:
    """Set theta and choose log sigma² so that the weights have the given log alpha."""
    with torch.no_grad():
        layer.weight_mu.copy_(theta)
        layer.weight_log_sigma2.copy_(log_alpha + torch.log(theta**2 + 1e-8))


def _random_posterior(layer, seed: int = 0) -> None:
    """Spread of log alphas on both sides of the threshold (about a third of the weights pruned)."""
    g = torch.Generator().manual_seed(seed)
    shape = layer.weight_mu.shape
    theta = torch.randn(shape, generator=g) * 0.5
    log_alpha = torch.empty(shape).uniform_(-6.0, 6.0, generator=g)
    _set_posterior(layer, theta, log_alpha)
    if layer.bias_mu is not None:
        with torch.no_grad():
            layer.bias_mu.copy_(torch.randn(layer.bias_mu.shape, generator=g) * 0.1)


def _check_moments(direct: torch.Tensor, local: torch.Tensor) -> None:
    n = direct.shape[0]
    mean_d, mean_l = direct.mean(0), local.mean(0)
    var_d, var_l = direct.var(0), local.var(0)
    se_mean = torch.sqrt((var_d + var_l) / n)
    assert torch.all((mean_d - mean_l).abs() < 5 * se_mean + 1e-6)
    # variance of a sample variance ~ 2 sigma^4 / n for near-Gaussian outputs; allow 6 standard errors
    se_var = torch.sqrt(2 * (var_d**2 + var_l**2) / n)
    assert torch.all((var_d - var_l).abs() < 6 * se_var + 1e-6)


def test_registered_and_config_round_trip():
    spec = PRIORS["svd"]
    assert spec.config_cls is SparseVDConfig
    cfg = SparseVDConfig(log_alpha_clip=[-8, 8])  # as read back from a JSON run file
    assert cfg.log_alpha_clip == (-8.0, 8.0)
    with pytest.raises(ValueError):
        SparseVDConfig(log_alpha_clip=(2.0, -2.0))
    layer = spec.from_linear(nn.Linear(5, 3), cfg)
    assert isinstance(layer, LinearSparseVD)
    assert abs(layer.weight_log_sigma2.mean().item() + 10.0) < 0.02
    assert 0.005 < layer.weight_log_sigma2.std().item() < 0.02


def test_kl_matches_monte_carlo():
    """-KL(N(theta, alpha theta²) || log-uniform) = 0.5 log alpha - E log|1 + sqrt(alpha) eps| + C with
    C = E log|eps| = -(gamma + log 2)/2 (paper Sec. 4.2); the approximation errs by at most ~0.01 per weight."""
    layer = LinearSparseVD(3, 2)
    targets = torch.tensor([[-6.0, -3.0, -1.0], [0.0, 1.5, 3.0]])
    _set_posterior(layer, torch.tensor([[0.3, -1.2, 0.05], [2.0, -0.4, 0.7]]), targets)
    log_alpha = _log_alpha(layer)
    torch.testing.assert_close(log_alpha, targets.double(), atol=1e-4, rtol=0)

    n = 1_000_000
    g = torch.Generator().manual_seed(1)
    theta = layer.weight_mu.detach().double().reshape(-1)
    sigma = layer.weight_log_sigma2.detach().double().reshape(-1).mul(0.5).exp()
    constant = -(EULER_GAMMA + math.log(2.0)) / 2.0
    kl_total, var_total = 0.0, 0.0
    for t, s, la in zip(theta, sigma, log_alpha.reshape(-1)):
        w = t + s * torch.randn(n, generator=g, dtype=torch.float64)
        values = torch.log(torch.abs(w / t))  # log|1 + sqrt(alpha) eps|
        kl_total += -(0.5 * la.item() - values.mean().item() + constant)
        var_total += values.var().item() / n
    kl = layer.kl_divergence()
    assert kl.dim() == 0
    assert abs(kl.item() - kl_total) < 0.012 * 6 + 5 * math.sqrt(var_total)


def test_kl_is_clipped_and_vanishes_for_pruned_weights():
    layer = LinearSparseVD(2, 1, bias=False)
    _set_posterior(layer, torch.tensor([[1.0, 1.0]]), torch.tensor([[20.0, 30.0]]))
    # log alpha clipped to 8: KL = -(k1 sigmoid(k2 + 8 k3) - 0.5 softplus(-8) - k1), close to 0
    assert 0 <= layer.kl_divergence().item() < 2 * 1e-3
    layer.kl_divergence().backward()
    assert torch.all(layer.weight_log_sigma2.grad == 0)  # clipped region: no gradient (as in the authors' code)


@torch.no_grad()
def test_linear_local_reparameterisation_matches_weight_sampling():
    torch.manual_seed(0)
    layer = LinearSparseVD(6, 3)
    _random_posterior(layer, seed=3)
    keep = _log_alpha(layer) < 3.0
    assert 0 < int((~keep).sum()) < keep.numel()
    x = torch.randn(1, 6)
    n = 20000
    g = torch.Generator().manual_seed(5)
    theta, sigma = layer.weight_mu, (0.5 * layer.weight_log_sigma2).exp()
    w = (theta + sigma * torch.randn(n, 3, 6, generator=g)) * keep  # train_clip: pruned weights are zero
    direct = torch.einsum("noi,i->no", w, x[0]) + layer.bias_mu
    local = layer(x.expand(n, 6))
    _check_moments(direct, local)


@torch.no_grad()
def test_conv_local_reparameterisation_matches_weight_sampling():
    torch.manual_seed(0)
    layer = Conv2dSparseVD(2, 3, 3, stride=2, padding=1)
    _random_posterior(layer, seed=4)
    keep = _log_alpha(layer) < 3.0
    assert 0 < int((~keep).sum()) < keep.numel()
    x = torch.randn(1, 2, 5, 5)
    n = 10000
    g = torch.Generator().manual_seed(6)
    theta, sigma = layer.weight_mu, (0.5 * layer.weight_log_sigma2).exp()
    w = (theta + sigma * torch.randn(n, *theta.shape, generator=g)) * keep
    patches = F.unfold(x, 3, padding=1, stride=2)[0]  # (2*3*3, 9 output positions)
    direct = torch.einsum("nok,kl->nol", w.reshape(n, 3, 18), patches).reshape(n, 3, 3, 3)
    direct = direct + layer.bias_mu[:, None, None]
    local = layer(x.expand(n, 2, 5, 5))
    assert local.shape == (n, 3, 3, 3)
    _check_moments(direct, local)


def _masked_layer() -> LinearSparseVD:
    """Linear(5, 4) with scattered pruned weights and input column 2 pruned entirely."""
    layer = LinearSparseVD(5, 4)
    _random_posterior(layer, seed=7)
    with torch.no_grad():
        layer.weight_log_sigma2[:, 2] = torch.log(layer.weight_mu[:, 2] ** 2 + 1e-8) + 4.0
        layer.weight_log_sigma2[:, 0] = torch.log(layer.weight_mu[:, 0] ** 2 + 1e-8) - 4.0
        layer.weight_log_sigma2[1, 0] += 7.5  # one pruned weight in an otherwise kept column
    return layer


def test_weight_mask_zeroes_pruned_weights_everywhere():
    layer = _masked_layer()
    keep = _log_alpha(layer) < 3.0
    assert keep.sum() > 0 and (~keep).sum() > 4
    torch.testing.assert_close(layer.weight_log_alpha().double(), _log_alpha(layer), atol=1e-5, rtol=0)
    assert torch.equal(layer.weight_keep_mask(), keep)
    assert layer.weight_keep_mask().dtype == torch.bool
    expected = torch.where(keep, layer.weight_mu.detach(), torch.zeros(()))
    assert torch.equal(layer.posterior_mean_weight().detach(), expected)
    plain = layer.to_plain()
    assert type(plain) is nn.Linear
    assert torch.equal(plain.weight.detach(), expected)
    assert torch.equal(plain.bias.detach(), layer.bias_mu.detach())
    x = torch.randn(7, 5)
    layer.deterministic = True
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, expected, layer.bias_mu))
        torch.testing.assert_close(plain(x), layer(x))
    assert torch.equal(layer.posterior_mean_bias(), layer.bias_mu)
    torch.testing.assert_close(layer.posterior_weight_variance(), layer.weight_log_sigma2.exp())


def test_linear_group_statistic_is_min_over_input_column():
    layer = _masked_layer()
    stats = layer.group_log_alpha().detach()
    log_alpha = _log_alpha(layer)
    assert stats.shape == (5,) and layer.num_groups == 5
    for i in range(5):
        assert abs(stats[i].item() - min(log_alpha[o, i].item() for o in range(4))) < 1e-5
    assert stats[2] >= 3.0  # every weight of input 2 is pruned
    assert stats[0] < 3.0  # column 0 keeps three of its four weights
    # a group is kept iff one of its weights is kept
    assert torch.equal(stats < 3.0, layer.weight_keep_mask().any(dim=0))


def test_conv_group_statistic_is_min_over_filter_and_masks_apply():
    layer = Conv2dSparseVD(3, 4, 2)
    _random_posterior(layer, seed=8)
    with torch.no_grad():
        layer.weight_log_sigma2[1] = torch.log(layer.weight_mu[1] ** 2 + 1e-8) + 5.0
    log_alpha = _log_alpha(layer)
    stats = layer.group_log_alpha().detach()
    assert stats.shape == (4,)
    for c in range(4):
        assert abs(stats[c].item() - log_alpha[c].min().item()) < 1e-5
    assert stats[1] >= 3.0
    keep = log_alpha < 3.0
    expected = torch.where(keep, layer.weight_mu.detach(), torch.zeros(()))
    plain = layer.to_plain()
    assert type(plain) is nn.Conv2d and torch.equal(plain.weight.detach(), expected)
    x = torch.randn(2, 3, 5, 5)
    layer.deterministic = True
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(x, expected, layer.bias_mu))
        assert torch.all(layer(x)[:, 1] == layer.bias_mu[1])  # filter 1 is pruned: only its bias is left


@torch.no_grad()
@pytest.mark.parametrize("train_clip", [True, False])
def test_train_clip_decides_whether_pruned_weights_act_in_training(train_clip):
    layer = LinearSparseVD(3, 1, config=SparseVDConfig(train_clip=train_clip))
    theta = torch.tensor([[0.8, -0.5, 0.6]])
    _set_posterior(layer, theta, torch.tensor([[-6.0, 3.5, -5.0]]))  # weight 1 pruned (sigma ~ 2.9)
    layer.bias_mu.fill_(0.1)
    x = torch.tensor([[1.0, 1.0, -1.0]])
    n = 40000
    out = layer(x.expand(n, 3))[:, 0]
    sigma2 = layer.weight_log_sigma2.exp()[0]
    keep = torch.tensor([True, not train_clip, True])
    mean = (theta[0] * x[0] * keep).sum() + 0.1
    var = (sigma2 * x[0] ** 2 * keep).sum()
    assert abs(out.mean().item() - mean.item()) < 5 * math.sqrt(var.item() / n)
    assert abs(out.var().item() - var.item()) < 6 * math.sqrt(2 * var.item() ** 2 / n)
    # the two settings differ by theta_1 x_1 = -0.5 in the mean, far beyond the Monte-Carlo error
    other = (theta[0] * x[0]).sum() + 0.1 if train_clip else (theta[0] * x[0] * torch.tensor([1, 0, 1])).sum() + 0.1
    assert abs(out.mean().item() - other.item()) > 0.4


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_gradients_reach_theta_and_log_sigma2(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = LinearSparseVD(4, 3), torch.randn(8, 4)
    else:
        layer, x = Conv2dSparseVD(2, 3, 3, padding=1), torch.randn(8, 2, 5, 5)
    layer.train()
    loss = layer(x).pow(2).mean() + layer.kl_divergence() / 100
    loss.backward()
    for p in (layer.weight_mu, layer.weight_log_sigma2, layer.bias_mu):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert len(list(layer.buffers())) == 0


def test_training_prunes_irrelevant_inputs():
    """Only features 0-2 of 20 decide the class: Sparse VD must drop (log alpha > 3) the other weights."""
    torch.manual_seed(0)
    n_train = 500
    x = torch.randn(n_train, 20)
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).long()
    model = bayesify(nn.Sequential(nn.Linear(20, 2)), "svd")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        loss, _, _ = variational_loss(model(x), y, model, n_train=n_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer = dict(bayesian_layers(model))["0"]
    log_alpha = _log_alpha(layer)
    assert (log_alpha[:, 3:] > 3.0).float().mean() > 0.9
    assert torch.all(log_alpha[:, :3] < 3.0)
    assert torch.equal(layer.group_log_alpha()[:3] < 3.0, torch.ones(3, dtype=torch.bool))
    with torch.no_grad():
        layer.deterministic = True
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95


@pytest.mark.parametrize("threshold", [-9.0, -8.0, 0.0, 8.0, 8.5])
def test_keep_mask_equals_clipped_log_alpha_below_threshold(threshold):
    """The mask skips the clamp for speed; it must still agree with ``weight_log_alpha() < threshold``,
    including thresholds at or beyond the clip bounds."""
    layer = LinearSparseVD(6, 5, config=SparseVDConfig(threshold=threshold))
    _random_posterior(layer, seed=11)
    with torch.no_grad():
        layer.weight_mu[0, :3] = 0.0  # log alpha beyond +8, clipped
        layer.weight_log_sigma2[1, :3] = -30.0  # log alpha below -8, clipped
    assert torch.equal(layer.weight_keep_mask(), layer.weight_log_alpha() < threshold)
    assert torch.equal(layer.weight_keep_mask(), _log_alpha(layer) < threshold)


def test_prune_threshold_decides_the_deployed_weights_and_training_keeps_its_own():
    """``prune_threshold`` moves the deployed mask (and the plain layer) to its own log alpha cut, checked against
    the independent log alpha; the training forward with ``train_clip`` still cuts at ``threshold``."""
    layer = LinearSparseVD(5, 4, config=SparseVDConfig(train_clip=True, prune_threshold=1))
    _random_posterior(layer, seed=11)
    assert layer.config.prune_threshold == 1.0 and isinstance(layer.config.prune_threshold, float)
    log_alpha = _log_alpha(layer)
    keep = log_alpha < 1.0
    assert keep.sum() < (log_alpha < 3.0).sum()  # the spread puts weights between the two cuts
    assert torch.equal(layer.weight_keep_mask(), keep)
    torch.testing.assert_close(layer.to_plain().weight.detach(),
                               torch.where(keep, layer.weight_mu.detach(), torch.zeros(())))
    assert torch.equal(layer._train_keep_mask(), log_alpha < 3.0)
    assert SparseVDConfig().deploy_threshold == 3.0 and SparseVDConfig(prune_threshold=0).deploy_threshold == 0.0


def test_the_svd_method_prunes_a_trained_posterior_at_the_runs_prune_threshold():
    """The method's compress step gives the layers the run's post-training settings: a posterior trained at the
    paper's threshold is deployed at the run's, with exactly the weights of log alpha below it kept (counted
    independently), and the caller's other copy of the posterior is left as it was."""
    import copy

    from bayescomp import create_model
    from bayescomp.compress import compress
    from bayescomp.methods import get_method
    from bayescomp.methods.priors import with_post_training_settings

    method = get_method("svd")
    assert method.post_training_settings == ("prune_threshold",)
    torch.manual_seed(0)
    model = bayesify(create_model("lenet300"), "svd", SparseVDConfig(train_clip=False))
    for index, (_, layer) in enumerate(bayesian_layers(model)):
        _random_posterior(layer, seed=20 + index)
    trained = copy.deepcopy(model)
    with_post_training_settings(model, method.make_settings({"train_clip": False, "prune_threshold": 0.5}),
                                method.post_training_settings)
    layers = [layer for _, layer in bayesian_layers(model)]
    assert all(layer.config.prune_threshold == 0.5 for layer in layers)
    assert all(layer.config.prune_threshold is None for _, layer in bayesian_layers(trained))
    result = compress(model, None)
    expected = sum(int((_log_alpha(layer) < 0.5).sum()) for layer in layers)
    assert result.thresholds == [0.5] * len(layers)
    assert result.weights_nonzero == expected < sum(int((_log_alpha(layer) < 3.0).sum()) for layer in layers)
    assert compress(trained, None).thresholds == [3.0] * len(layers)


def test_a_changed_prune_threshold_reuses_the_trained_posterior():
    from bayescomp.pipeline import changed_settings

    before = {"method": "svd", "prior": {"threshold": 3.0, "train_clip": False}}
    after = {"method": "svd", "prior": {"threshold": 3.0, "train_clip": False, "prune_threshold": 1.0}}
    assert changed_settings(before, after) == ["prior.prune_threshold"]
    assert changed_settings(before, {"method": "svd", "prior": {"threshold": 2.0, "train_clip": False}}) == ["prior"]


@torch.no_grad()
@pytest.mark.parametrize("fused", [True, False])
def test_training_clips_at_the_training_threshold_whatever_the_deployed_one(fused):
    """With ``train_clip`` and a ``prune_threshold`` that would prune every weight, the training forward (both code
    paths) still drops only the weights above ``threshold``; the deployed layer drops them all."""
    layer = LinearSparseVD(3, 1, config=SparseVDConfig(train_clip=True, prune_threshold=-7.0))
    layer.fused = fused
    theta = torch.tensor([[0.8, -0.5, 0.6]])
    _set_posterior(layer, theta, torch.tensor([[-6.0, 3.5, -5.0]]))
    layer.bias_mu.fill_(0.1)
    x = torch.tensor([[1.0, 1.0, -1.0]])
    n = 40000
    out = layer(x.expand(n, 3))[:, 0]
    keep = torch.tensor([True, False, True])
    mean = (theta[0] * x[0] * keep).sum() + 0.1
    var = (layer.weight_log_sigma2.exp()[0] * x[0] ** 2 * keep).sum()
    assert abs(out.mean().item() - mean.item()) < 5 * math.sqrt(var.item() / n)
    assert abs(out.var().item() - var.item()) < 6 * math.sqrt(2 * var.item() ** 2 / n)
    assert not bool(layer.weight_keep_mask().any()) and not bool(layer.to_plain().weight.any())


@torch.no_grad()
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_authors_clip_style_keeps_pruned_noise_in_linear_layers_only(kind):
    """``train_clip_style="authors"``: the training output's mean and variance against the reference layers'
    formulas, computed here: mean from theta with the pruned weights zeroed; variance exp(clip(log alpha)) theta²,
    with the pruned weights kept in a Linear layer and zeroed in a conv layer (a 1x1 conv on a 1x1 image is the
    same three-input product)."""
    cfg = SparseVDConfig(train_clip=True, train_clip_style="authors")
    theta = torch.tensor([[0.8, -0.5, 0.6]])
    log_alpha = torch.tensor([[-9.0, 3.5, -5.0]])  # weight 0 below the clip (-8), weight 1 pruned
    x = torch.tensor([[1.0, 1.0, -1.0]])
    if kind == "linear":
        layer = LinearSparseVD(3, 1, config=cfg)
        _set_posterior(layer, theta, log_alpha)
    else:
        layer = Conv2dSparseVD(3, 1, 1, config=cfg)
        _set_posterior(layer, theta.view(1, 3, 1, 1), log_alpha.view(1, 3, 1, 1))
        x = x.view(1, 3, 1, 1)
    layer.bias_mu.fill_(0.1)
    n = 40000
    out = layer(x.expand(n, *x.shape[1:])).reshape(n)
    keep = torch.tensor([True, False, True])
    variance = log_alpha[0].clamp(-8.0, 8.0).exp() * theta[0] ** 2
    if kind == "conv":
        variance = variance * keep
    mean = (theta[0] * x.flatten() * keep).sum() + 0.1
    var = (variance * x.flatten() ** 2).sum()
    assert abs(out.mean().item() - mean.item()) < 5 * math.sqrt(var.item() / n)
    assert abs(out.var().item() - var.item()) < 6 * math.sqrt(2 * var.item() ** 2 / n)
    if kind == "linear":  # the pruned weight's noise (variance ~0.33) dominates: far from the zeroed variance
        assert out.var().item() > 10 * (variance * keep * x.flatten() ** 2).sum().item()


def test_authors_clip_style_lets_a_pruned_linear_weight_learn_its_variance():
    """Under the authors' style the data gradient reaches log sigma² of a pruned Linear weight (its noise is still
    in the output), and not its theta (its mean is zeroed); under the default style it reaches neither. The KL is
    left out: the gradients are the likelihood's."""
    grads = {}
    for style in ("mean_and_variance", "authors"):
        torch.manual_seed(0)
        layer = LinearSparseVD(3, 2, config=SparseVDConfig(train_clip=True, train_clip_style=style))
        _set_posterior(layer, torch.tensor([[0.8, -0.5, 0.6], [0.3, 0.4, -0.7]]),
                       torch.tensor([[-6.0, 3.5, -5.0], [-4.0, -4.0, -4.0]]))
        layer.train()
        x = torch.randn(256, 3)
        F.mse_loss(layer(x), torch.zeros(256, 2)).backward()
        grads[style] = (layer.weight_mu.grad[0, 1].item(), layer.weight_log_sigma2.grad[0, 1].item())
    assert grads["mean_and_variance"] == (0.0, 0.0)
    theta_grad, log_sigma2_grad = grads["authors"]
    assert abs(theta_grad) < 1e-6  # exp(log alpha) theta² = sigma² inside the clip: theta drops out
    assert log_sigma2_grad > 0  # the noise only adds to the squared error, so the data pushes sigma² down


def test_authors_clip_style_rejects_unknown_styles():
    with pytest.raises(ValueError, match="train_clip_style"):
        SparseVDConfig(train_clip_style="mean_only")


def test_authors_clip_style_trains_through_the_library_step():
    """A few steps of the library's objective with the authors' style: finite loss, and the KL of the autograd path
    equals the default style's KL on the same parameters (the style changes the forward only)."""
    torch.manual_seed(0)
    layers = {style: LinearSparseVD(20, 5, config=SparseVDConfig(train_clip_style=style))
              for style in ("mean_and_variance", "authors")}
    layers["authors"].load_state_dict(layers["mean_and_variance"].state_dict())
    torch.testing.assert_close(layers["authors"].kl_divergence(), layers["mean_and_variance"].kl_divergence())
    model = nn.Sequential(layers["authors"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for _ in range(5):
        loss = variational_loss(model(x), y, model, 1000)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
