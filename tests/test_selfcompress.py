"""Tests for the self-compression objective and kernel pruning (Carannante et al., MLSP 2020)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescomp.selfcompress import DensitySequential, Moments, density_from_plain
from bayescomp.selfcompress.layers import DensityFlatten, DensityLinear, DensityReLU, DensitySoftmax
from bayescomp.selfcompress.objective import cross_entropy_loss, gaussian_elbo_loss, gaussian_nll
from bayescomp.selfcompress.prune import kernel_norms, kernel_snr, remove_kernels

REMOVED = (1, 4)


def _random_spd(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, k, k, generator=gen, dtype=torch.float64)
    return a @ a.transpose(1, 2) / k + 0.1 * torch.eye(k, dtype=torch.float64)


def _tiny_density() -> DensitySequential:
    torch.manual_seed(0)
    return DensitySequential(DensityLinear(5, 7), DensityReLU(), DensityLinear(7, 3), DensitySoftmax())


def _paper_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 12 * 12, 10), nn.Softmax(dim=-1))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)  # nonzero biases, so losing act(bias) would show up
    return net


def _keep(n: int, removed: tuple[int, ...]) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(removed)] = False
    return keep


def _weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight_mu if hasattr(layer, "weight_mu") else layer.weight


# ----------------------------------------------------------------------------------------- objective


def test_gaussian_nll_full_matches_multivariate_normal() -> None:
    gen = torch.Generator().manual_seed(1)
    n, k, eps = 4, 5, 1e-3
    p = torch.softmax(torch.randn(n, k, generator=gen, dtype=torch.float64), -1)
    cov = _random_spd(n, k, gen)
    labels = torch.tensor([0, 3, 4, 1])
    y = F.one_hot(labels, k).to(torch.float64)
    mvn = torch.distributions.MultivariateNormal(p, cov + eps * torch.eye(k, dtype=torch.float64))
    expected = (-mvn.log_prob(y) - 0.5 * k * math.log(2 * math.pi)).mean()
    got = gaussian_nll(Moments(mean=p, cov=cov), labels, eps)
    torch.testing.assert_close(got, expected)


def test_gaussian_nll_diag_equals_full_on_diagonal_cov() -> None:
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(3, 4, generator=gen, dtype=torch.float64), -1)
    var = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([2, 0, 3])
    diag = gaussian_nll(Moments(mean=p, var=var), labels)
    full = gaussian_nll(Moments(mean=p, cov=torch.diag_embed(var)), labels)
    torch.testing.assert_close(diag, full)


@pytest.mark.parametrize("mode", ["diag", "full"])
def test_gradients_reach_means_and_rho(mode: str) -> None:
    model = _tiny_density()
    x = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, nll, kl = gaussian_elbo_loss(model(x, mode), labels, model, n_train=100)
    loss.backward()
    for layer in (model[0], model[2]):
        assert layer.weight_mu.grad is not None and layer.weight_mu.grad.abs().sum() > 0
        assert layer.weight_rho.grad is not None and layer.weight_rho.grad.abs().sum() > 0
        assert torch.isfinite(layer.weight_rho.grad).all()
    assert torch.isfinite(nll) and kl > 0


def test_cross_entropy_variant_equals_nll_loss() -> None:
    gen = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(5, 4, generator=gen), -1)
    labels = torch.tensor([0, 1, 2, 3, 1])
    plain = nn.Linear(2, 2)  # no kl_divergence: the KL must be 0
    loss, nll, kl = cross_entropy_loss(Moments(mean=p, var=torch.zeros_like(p)), labels, plain, n_train=10)
    torch.testing.assert_close(nll, F.nll_loss(torch.log(p), labels), rtol=1e-5, atol=1e-6)
    assert kl.item() == 0.0
    torch.testing.assert_close(loss, nll)


@pytest.mark.parametrize("loss_fn", [gaussian_elbo_loss, cross_entropy_loss])
def test_kl_term_scales_with_kl_scale_over_n_train(loss_fn) -> None:
    model = _tiny_density()
    out = model(torch.randn(4, 5))
    labels = torch.tensor([0, 1, 2, 0])
    kl_sum = model.kl_divergence()
    for kl_scale, n_train in [(1.0, 100), (0.5, 100), (1.0, 2000), (3.0, 7)]:
        loss, nll, kl = loss_fn(out, labels, model, n_train=n_train, kl_scale=kl_scale)
        torch.testing.assert_close(kl, kl_sum)
        torch.testing.assert_close(loss - nll, kl_scale * kl_sum / n_train)


def test_non_finite_covariance_raises() -> None:
    p = torch.full((2, 3), 1 / 3)
    labels = torch.tensor([0, 1])
    cov = torch.eye(3).repeat(2, 1, 1)
    cov[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        gaussian_elbo_loss(Moments(mean=p, cov=cov), labels, nn.Identity(), n_train=10)
    var = torch.ones(2, 3)
    var[0, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        gaussian_elbo_loss(Moments(mean=p, var=var), labels, nn.Identity(), n_train=10)


# ----------------------------------------------------------------------------------------- pruning


def _masked_plain(model: nn.Sequential, next_index: int, removed: tuple[int, ...], hw: int) -> nn.Sequential:
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for c in removed:
            masked[next_index].weight[:, c * hw:(c + 1) * hw] = 0.0
    return masked


def test_remove_kernels_plain_paper_net_matches_masked_model() -> None:
    net = _paper_net()
    before = copy.deepcopy(net.state_dict())
    pruned = remove_kernels(net, 0, _keep(6, REMOVED))
    assert pruned[0].weight.shape == (4, 1, 5, 5) and pruned[0].bias.shape == (4,)
    assert pruned[0].out_channels == 4
    assert pruned[4].weight.shape == (10, 4 * 144) and pruned[4].in_features == 4 * 144
    for key, value in net.state_dict().items():  # input unchanged
        assert torch.equal(value, before[key])
    x = torch.randn(3, 1, 28, 28)
    masked = _masked_plain(net, 4, REMOVED, 144)
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(pruned(x), net(x))  # the removed kernels did matter


def _zero_channels_hook(removed: tuple[int, ...]):
    def hook(_module: nn.Module, _inputs: tuple, out: Moments) -> Moments:
        mean, var = out.mean.clone(), out.var.clone()
        mean[:, list(removed)] = 0.0
        var[:, list(removed)] = 0.0
        return Moments(mean=mean, var=var)
    return hook


def test_remove_kernels_density_paper_net_matches_masked_model() -> None:
    dnet = density_from_plain(_paper_net()).double()
    with torch.no_grad():
        dnet[0].weight_rho.copy_(torch.linspace(-3.0, -1.0, 6))
    pruned = remove_kernels(dnet, 0, _keep(6, REMOVED))
    assert isinstance(pruned, DensitySequential)
    assert pruned[0].weight_mu.shape == (4, 1, 5, 5) and pruned[0].weight_rho.shape == (4,)
    assert pruned[0].bias.shape == (4,) and pruned[0].out_channels == 4
    assert pruned[4].weight_mu.shape == (10, 4 * 144) and pruned[4].weight_rho.shape == (10,)
    torch.testing.assert_close(pruned[0].sigma2, dnet[0].sigma2[_keep(6, REMOVED)])
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    # Masked model: the removed channels' outgoing columns zeroed. That alone reproduces the mean, but not the
    # variance: the next layer's isotropic weight variance multiplies the whole input energy (tr S + mu^T mu),
    # so the removed channels' activations must be zeroed as well (hook on the max-pool output).
    masked = copy.deepcopy(dnet)
    with torch.no_grad():
        for c in REMOVED:
            masked[4].weight_mu[:, c * 144:(c + 1) * 144] = 0.0
    out_p, out_cols = pruned(x, "diag"), masked(x, "diag")
    torch.testing.assert_close(out_p.mean, out_cols.mean)
    assert not torch.allclose(out_p.var, out_cols.var)
    masked[2].register_forward_hook(_zero_channels_hook(REMOVED))
    out_m = masked(x, "diag")
    torch.testing.assert_close(out_p.mean, out_m.mean)
    torch.testing.assert_close(out_p.var, out_m.var)
    assert pruned.kl_divergence() < dnet.kl_divergence()


def test_kernel_norms_and_snr() -> None:
    dnet = density_from_plain(_paper_net())
    with torch.no_grad():
        dnet[0].weight_rho.copy_(torch.linspace(-3.0, 0.5, 6))
    for model in (_paper_net(), dnet):
        for idx in (0, 4):
            w = _weight(model[idx])
            expected = torch.stack([torch.linalg.vector_norm(w[k]) for k in range(w.shape[0])])
            torch.testing.assert_close(kernel_norms(model, idx), expected.detach())
    snr = kernel_snr(dnet, 0)
    s2 = F.softplus(dnet[0].weight_rho.detach())
    expected = torch.stack([torch.linalg.vector_norm(dnet[0].weight_mu[k].detach()) / math.sqrt(25 * s2[k])
                            for k in range(6)])
    torch.testing.assert_close(snr, expected)
    with pytest.raises(ValueError, match="no weight variance"):
        kernel_snr(_paper_net(), 0)
    with pytest.raises(TypeError, match="not a Conv2d/Linear"):
        kernel_norms(_paper_net(), 1)


def test_remove_kernels_error_cases_leave_model_unchanged() -> None:
    net = _paper_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="would remove every kernel of layer 0"):
        remove_kernels(net, 0, torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="last weight layer"):
        remove_kernels(net, 4, _keep(10, (3,)))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        remove_kernels(net, 0, torch.ones(5, dtype=torch.bool))
    bn_net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                           nn.Linear(6 * 24 * 24, 10))
    bn_before = copy.deepcopy(bn_net.state_dict())
    with pytest.raises(TypeError, match=r"1 \(BatchNorm2d\)"):
        remove_kernels(bn_net, 0, _keep(6, REMOVED))
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    for key, value in bn_net.state_dict().items():
        assert torch.equal(value, bn_before[key])
    assert net[0].out_channels == 6 and net[4].in_features == 864


def test_remove_units_linear_to_linear_mlp() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(),
                        nn.Linear(6, 3))
    removed = (0, 5, 6)
    pruned = remove_kernels(mlp, 1, _keep(8, removed))
    assert pruned[1].weight.shape == (5, 12) and pruned[1].out_features == 5
    assert pruned[3].weight.shape == (6, 5) and pruned[3].in_features == 5
    x = torch.randn(4, 3, 4)
    torch.testing.assert_close(pruned(x), _masked_plain(mlp, 3, removed, 1)(x))
    dmlp = DensitySequential(DensityFlatten(), DensityLinear(12, 8), DensityReLU(), DensityLinear(8, 3),
                             DensitySoftmax())
    dpruned = remove_kernels(dmlp, 1, _keep(8, removed))
    assert dpruned[3].weight_mu.shape == (3, 5) and dpruned[1].weight_rho.shape == (5,)
    out = dpruned(x.view(4, 12), "full")
    assert out.cov.shape == (4, 3, 3) and torch.isfinite(out.cov).all()


def test_remove_kernels_conv_to_conv() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.Flatten(), nn.Linear(4 * 16, 3))
    removed = (2, 3)
    pruned = remove_kernels(net, 0, _keep(5, removed))
    assert pruned[0].weight.shape == (3, 2, 3, 3) and pruned[2].weight.shape == (4, 3, 3, 3)
    assert pruned[2].in_channels == 3
    masked = copy.deepcopy(net)
    with torch.no_grad():
        masked[2].weight[:, list(removed)] = 0.0
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(pruned(x), masked(x))
    dnet = density_from_plain(net).double()
    dpruned = remove_kernels(dnet, 2, _keep(4, (0,)))  # conv -> flatten -> linear on a density model
    assert dpruned[4].weight_mu.shape == (3, 3 * 16)
    out = dpruned(x.double(), "full")
    assert out.cov.shape == (2, 3, 3) and torch.isfinite(out.cov).all()


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_self_compressed_kernels_map_back_onto_the_dense_shapes_exactly(name):
    """The pipeline's path: kernels deleted from the density twin are written back onto the dense layer shapes
    (zeros at the deleted positions), and the shared shrinking path then yields a plain model computing the same
    function as the small density network's predictive mean."""
    from bayescomp.compress import prunable_modules
    from bayescomp.magnitude import magnitude_compress
    from bayescomp.models import create_model
    from bayescomp.selfcompress.procedure import (
        SelfCompressionConfig, dense_shaped_posterior_mean, density_twin, weight_layers,
    )

    torch.manual_seed(0)
    dense = create_model(name, 10, (1, 28, 28), [0.13], [0.31]).eval()
    small = density_twin(dense, SelfCompressionConfig(rho_init=-30.0))
    indices = weight_layers(small)
    kept = [torch.arange(small[i].weight_mu.shape[0]) for i in indices]
    g = torch.Generator().manual_seed(3)
    for position, index in enumerate(indices[:-1]):
        keep = torch.rand(kept[position].numel(), generator=g) < 0.6
        keep[0] = True
        small = remove_kernels(small, index, keep)
        kept[position] = kept[position][keep]
    plain = dense_shaped_posterior_mean(dense, small, kept)
    result = magnitude_compress(plain, [torch.ones_like(m.weight) for m in prunable_modules(plain)])
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(result.model(x), dim=1), small(x).mean, rtol=1e-4, atol=1e-5)
    sizes = [m.weight.shape[0] for m in prunable_modules(result.model)]
    assert sizes[:-1] == [int(k.numel()) for k in kept[:-1]] and sizes[-1] == 10


def test_loading_uncertainty_from_a_file_without_a_variance_head_is_refused(tmp_path):
    from bayescomp.compress.packed import save_packed
    from bayescomp.selfcompress.procedure import load_with_uncertainty

    path = tmp_path / "plain.bcz"
    save_packed(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), path, {}, {})
    with pytest.raises(ValueError, match="no variance head"):
        load_with_uncertainty(path)
