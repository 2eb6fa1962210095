"""Density-propagating layers (Carannante et al., MLSP 2020; Dera et al. 2019) against Monte-Carlo sampling.

Monte-Carlo tolerances are 5 standard errors, the standard errors estimated from the samples themselves
(so they hold for the non-Gaussian products of Gaussian weights and inputs); Taylor layers add a rigorous
bound on the second-order remainder. All computations are in float64 with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from bayescomp.selfcompress import (
    CovarianceTooLargeError,
    DensityConv2d,
    DensityFlatten,
    DensityLinear,
    DensityMaxPool2d,
    DensityReLU,
    DensitySequential,
    DensitySoftmax,
    DensityTanh,
    Moments,
    density_from_plain,
)

N_SAMPLES = 20_000
N_SE = 5.0


def mc_stats(z: Tensor) -> dict[str, Tensor]:
    """Sample mean/cov of ``z`` (S, K) and their standard errors (from the empirical 4th moments)."""
    s = z.shape[0]
    mean = z.mean(0)
    c = z - mean
    cov = c.T @ c / s
    sq = c.pow(2)
    var_prod = (sq.T @ sq / s - cov.pow(2)).clamp_min(0)  # Var(c_a c_b) per entry
    se_mean = (torch.diagonal(cov) / s).sqrt()
    return {"mean": mean, "cov": cov, "se_mean": se_mean, "se_cov": (var_prod / s).sqrt()}


def assert_within(est: Tensor, ref: Tensor, tol: Tensor, what: str) -> None:
    excess = (est - ref).abs() - tol
    assert bool((excess <= 0).all()), f"{what}: worst excess over tolerance {excess.max().item():.3e}"


def block_dense(cov: Tensor) -> Tensor:
    """(C, P, P) per-channel blocks -> (C*P, C*P) block-diagonal matrix."""
    return torch.block_diag(*cov.unbind(0))


def sample_weights(layer: DensityLinear | DensityConv2d, gen: torch.Generator) -> Tensor:
    eps = torch.randn((N_SAMPLES, *layer.weight_mu.shape), generator=gen, dtype=torch.float64)
    sd = layer.sigma2.detach().sqrt().view(1, -1, *([1] * (layer.weight_mu.dim() - 1)))
    return layer.weight_mu.detach() + sd * eps


def make_linear(gen: torch.Generator) -> DensityLinear:
    layer = DensityLinear(5, 4).double()
    with torch.no_grad():
        layer.weight_mu.copy_(torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.5)
        layer.weight_rho.copy_(torch.tensor([-2.0, -1.0, 0.0, 0.5]))
        layer.bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    return layer


def make_conv(gen: torch.Generator, stride: int = 1, padding: int = 0) -> DensityConv2d:
    layer = DensityConv2d(2, 3, 3, stride=stride, padding=padding).double()
    with torch.no_grad():
        layer.weight_mu.copy_(torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.4)
        layer.weight_rho.copy_(torch.tensor([-2.0, -0.5, 0.5]))
        layer.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    return layer


def conv_samples(layer: DensityConv2d, x: Tensor, w: Tensor) -> Tensor:
    """Per-sample convolution (im2col products) of x (S or 1, C, H, W) with w (S, O, C, k, k) -> (S, O*P)."""
    patches = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # (S or 1, d, P)
    out = torch.einsum("sod,tdp->sop", w.flatten(2), patches) if x.shape[0] == 1 else torch.einsum(
        "sod,sdp->sop", w.flatten(2), patches)
    return (out + layer.bias.detach().view(1, -1, 1)).flatten(1)


def test_linear_deterministic_input_matches_mc_and_diag_equals_full() -> None:
    gen = torch.Generator().manual_seed(0)
    layer = make_linear(gen)
    x = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    full = layer(Moments.deterministic(x, "full"))
    diag = layer(Moments.deterministic(x, "diag"))
    z = torch.einsum("soi,i->so", sample_weights(layer, gen), x[0]) + layer.bias.detach()
    st = mc_stats(z)
    assert_within(full.mean[0], st["mean"], N_SE * st["se_mean"], "linear mean")
    assert_within(full.cov[0], st["cov"], N_SE * st["se_cov"] + 1e-12, "linear cov")
    torch.testing.assert_close(diag.var, full.diagonal(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(diag.mean, full.mean, rtol=0, atol=0)


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (2, 1)])
def test_conv_deterministic_input_matches_mc_and_diag_equals_full(stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(1)
    layer = make_conv(gen, stride, padding)
    x = torch.randn(1, 2, 6, 6, generator=gen, dtype=torch.float64)
    full = layer(Moments.deterministic(x, "full"))
    diag = layer(Moments.deterministic(x, "diag"))
    st = mc_stats(conv_samples(layer, x, sample_weights(layer, gen)))
    assert_within(full.mean.flatten(), st["mean"], N_SE * st["se_mean"], "conv mean")
    # Block-diagonal propagated covariance vs the full MC one: cross-channel entries must be ~0 too.
    assert_within(block_dense(full.cov[0]), st["cov"], N_SE * st["se_cov"] + 1e-12, "conv cov")
    torch.testing.assert_close(diag.var, full.diagonal(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(full.mean, F.conv2d(x, layer.weight_mu, layer.bias, stride, padding))


def test_linear_random_input_is_exact() -> None:
    gen = torch.Generator().manual_seed(2)
    layer = make_linear(gen)
    mu = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64) * 0.5
    sigma = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64)
    out = layer(Moments(mean=mu, cov=sigma.unsqueeze(0)))
    x = mu + torch.randn(N_SAMPLES, 5, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    z = torch.einsum("soi,si->so", sample_weights(layer, gen), x) + layer.bias.detach()
    st = mc_stats(z)
    assert_within(out.mean[0], st["mean"], N_SE * st["se_mean"], "linear mean")
    assert_within(out.cov[0], st["cov"], N_SE * st["se_cov"], "linear cov")
    diag = layer(Moments(mean=mu, var=torch.diagonal(sigma).unsqueeze(0)))
    ref = layer(Moments(mean=mu, cov=torch.diag_embed(torch.diagonal(sigma)).unsqueeze(0)))
    torch.testing.assert_close(diag.var, ref.diagonal(), rtol=1e-12, atol=1e-14)


def test_conv_random_independent_input_variances_match_mc() -> None:
    """With mutually independent input entries the diag-mode variances are exact. With correlated inputs the
    authors' rule drops the M-weighted input covariances inside a patch (and all off-diagonal input terms)."""
    gen = torch.Generator().manual_seed(3)
    layer = make_conv(gen)
    mu = torch.randn(1, 2, 6, 6, generator=gen, dtype=torch.float64)
    var = torch.rand(1, 2, 6, 6, generator=gen, dtype=torch.float64) * 0.5 + 0.05
    diag = layer(Moments(mean=mu, var=var))
    full = layer(Moments(mean=mu, cov=torch.diag_embed(var.flatten(2))))
    x = mu + var.sqrt() * torch.randn(N_SAMPLES, 2, 6, 6, generator=gen, dtype=torch.float64)
    z = conv_samples(layer, x, sample_weights(layer, gen))
    st = mc_stats(z)
    c = z - st["mean"]
    se_var = ((c.pow(4).mean(0) - torch.diagonal(st["cov"]).pow(2)) / N_SAMPLES).sqrt()
    assert_within(diag.mean.flatten(), st["mean"], N_SE * st["se_mean"], "conv mean")
    assert_within(diag.var.flatten(), torch.diagonal(st["cov"]), N_SE * se_var, "conv variances")
    torch.testing.assert_close(full.diagonal(), diag.var, rtol=1e-12, atol=1e-14)


def taylor_check(layer: torch.nn.Module, mu: Tensor, sigma: Tensor, fn, hess_bound: float,
                 gen: torch.Generator) -> None:
    """MC vs first-order propagation of a vector input; tolerance = 5 SE + second-order remainder bound.

    With ``f(mu + d) = f(mu) + J d + r`` and ``|r_i| <= H/2 * |d|_1^2`` (H bounds the second derivatives;
    ``|d|_1`` over the inputs output i depends on): ``|E r_i| <= H/2 (sum sd)^2``,
    ``||r_i||_2 <= H/2 * sqrt(3) (sum sd)^2`` (Minkowski on Gaussian 4th moments), and
    ``|Cov(f_i, f_j) - (J S J^T)_ij| <= sd_i ||r_j|| + sd_j ||r_i|| + ||r_i|| ||r_j||``.
    """
    out = layer(Moments(mean=mu.unsqueeze(0), cov=sigma.unsqueeze(0)))
    x = mu + torch.randn(N_SAMPLES, mu.numel(), generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(
        sigma).T
    st = mc_stats(fn(x))
    sd_in = torch.diagonal(sigma).sqrt()
    elementwise = not isinstance(layer, DensitySoftmax)
    spread = sd_in if elementwise else sd_in.sum().expand_as(sd_in)
    mean_bound = 0.5 * hess_bound * spread.pow(2)
    r_norm = 0.5 * hess_bound * math.sqrt(3.0) * spread.pow(2)
    sd_out = torch.diagonal(out.cov[0]).sqrt()
    cov_bound = (sd_out[:, None] * r_norm[None] + r_norm[:, None] * sd_out[None]
                 + r_norm[:, None] * r_norm[None])
    assert_within(out.mean[0], st["mean"], N_SE * st["se_mean"] + mean_bound, f"{layer} mean")
    assert_within(out.cov[0], st["cov"], N_SE * st["se_cov"] + cov_bound, f"{layer} cov")
    diag_in = Moments(mean=mu.unsqueeze(0), var=torch.diagonal(sigma).unsqueeze(0))
    full_in = Moments(mean=mu.unsqueeze(0), cov=torch.diag_embed(diag_in.var))
    torch.testing.assert_close(layer(diag_in).var, layer(full_in).diagonal(), rtol=1e-12, atol=1e-30)


def small_cov(gen: torch.Generator, d: int, sd: float) -> Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    corr = a @ a.T + d * torch.eye(d, dtype=torch.float64)
    scale = torch.diagonal(corr).rsqrt()
    return sd**2 * corr * scale[:, None] * scale[None]


def test_relu_taylor_matches_mc_on_maps() -> None:
    """Means at |mu| >= 0.2 with sd 1e-3: crossing the kink is a >200-sigma event, so ReLU is linear there and
    the first-order rule is exact up to sampling error (remainder bound 0)."""
    gen = torch.Generator().manual_seed(4)
    sign = torch.where(torch.rand(8, generator=gen) < 0.5, -1.0, 1.0).double()
    mu = sign * (0.2 + torch.rand(8, generator=gen, dtype=torch.float64))
    sigma = small_cov(gen, 8, 1e-3)
    taylor_check(DensityReLU(), mu, sigma, torch.relu, 0.0, gen)
    # The same on a (1, 2, 2, 2) map: channel blocks behave like separate vectors.
    blocks = torch.stack([sigma[:4, :4], sigma[4:, 4:]]).unsqueeze(0)
    out = DensityReLU()(Moments(mean=mu.view(1, 2, 2, 2), cov=blocks))
    g = (mu > 0).double().view(2, 4)
    torch.testing.assert_close(out.cov[0], blocks[0] * g[:, :, None] * g[:, None, :])


def test_tanh_taylor_matches_mc() -> None:
    gen = torch.Generator().manual_seed(5)
    mu = torch.randn(6, generator=gen, dtype=torch.float64)
    hess = 4.0 / (3.0 * math.sqrt(3.0))  # max |tanh''|
    taylor_check(DensityTanh(), mu, small_cov(gen, 6, 1e-3), torch.tanh, hess, gen)


def test_softmax_taylor_matches_mc() -> None:
    """|d2 p_i / dx_j dx_k| = |p_i (d_ik - p_k)(d_ij - p_j) - p_i p_j (d_jk - p_k)| <= 2 bounds the Hessian"""
    gen = torch.Generator().manual_seed(6)
    mu = torch.randn(4, generator=gen, dtype=torch.float64)
    taylor_check(DensitySoftmax(), mu, small_cov(gen, 4, 1e-4), lambda x: torch.softmax(x, -1), 2.0, gen)


def test_maxpool_hand_example() -> None:
    mean = torch.tensor([[1.0, 5.0, 0.0, 2.0],
                         [3.0, 2.0, 7.0, 1.0],
                         [0.0, 9.0, 4.0, 4.5],
                         [8.0, 1.0, 3.0, 2.0]], dtype=torch.float64).view(1, 1, 4, 4)
    var = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 1, 4, 4)  # var at flat index i is i + 1
    out = DensityMaxPool2d(2)(Moments(mean=mean, var=var))
    argmax = [1, 6, 9, 11]  # positions of 5, 7, 9, 4.5
    torch.testing.assert_close(out.mean, F.max_pool2d(mean, 2))
    expected_var = torch.tensor([i + 1.0 for i in argmax], dtype=torch.float64)
    torch.testing.assert_close(out.var.flatten(), expected_var)
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cov = (a @ a.T).view(1, 1, 16, 16)
    full = DensityMaxPool2d(2)(Moments(mean=mean, cov=cov))
    expected = cov[0, 0][argmax][:, argmax]
    torch.testing.assert_close(full.cov[0, 0], expected, rtol=0, atol=0)


def test_flatten_linear_full_matches_dense_assembly() -> None:
    gen = torch.Generator().manual_seed(8)
    n, c, h, w = 2, 3, 2, 2
    mu = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    a = torch.randn(n, c, h * w, h * w, generator=gen, dtype=torch.float64)
    blocks = a @ a.transpose(-1, -2)
    layer = DensityLinear(c * h * w, 5).double()
    with torch.no_grad():
        layer.weight_rho.copy_(torch.linspace(-3, 1, 5))
    x = Moments(mean=mu, cov=blocks)
    flat = DensityFlatten()(x)
    via_flatten = layer(flat)
    direct = layer(x)  # block-diagonal shortcut sum_c M_c S_c M_c^T
    m, s2 = layer.weight_mu.detach(), layer.sigma2.detach()
    for i in range(n):
        dense = torch.block_diag(*blocks[i].unbind(0))
        torch.testing.assert_close(flat.cov[i], dense, rtol=0, atol=0)
        v = mu[i].flatten()
        ref = m @ dense @ m.T + torch.diag(s2 * (torch.trace(dense) + v @ v))
        torch.testing.assert_close(via_flatten.cov[i], ref)
        torch.testing.assert_close(direct.cov[i], ref)
    torch.testing.assert_close(via_flatten.mean, F.linear(mu.flatten(1), m, layer.bias))


def test_memory_guard_raises_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    # Output cov (1, 10^6, 10^6) float32 = 4 TB: without the guard this allocation itself would fail.
    layer = DensityLinear(1, 1_000_000)
    x = Moments.deterministic(torch.ones(1, 1), "full")
    with pytest.raises(CovarianceTooLargeError, match="DensityLinear.*diag"):
        layer(x)
    seq = DensitySequential(DensityConv2d(1, 4, 3), max_full_cov_bytes=1000)
    with pytest.raises(CovarianceTooLargeError) as info:
        seq(Moments.deterministic(torch.ones(2, 1, 8, 8), "full"))
    msg = str(info.value)
    assert "layer 0 (DensityConv2d)" in msg and '"diag"' in msg and "(2, 4, 36, 36)" in msg
    assert f"{2 * 4 * 36 * 36 * 4:,} bytes" in msg
    assert seq(torch.ones(2, 1, 8, 8), mode="diag").var.shape == (2, 4, 6, 6)  # diag mode is unaffected
    monkeypatch.setenv("BAYESCOMP_MAX_COV_BYTES", "100")
    with pytest.raises(CovarianceTooLargeError, match="Moments.deterministic"):
        Moments.deterministic(torch.ones(2, 1, 8, 8), "full")


def paper_net() -> nn.Sequential:
    torch.manual_seed(9)
    return nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(10 * 12 * 12, 10), nn.Softmax(dim=1))


@pytest.mark.parametrize("mode", ["diag", "full"])
def test_density_from_plain_paper_architecture(mode: str) -> None:
    plain = paper_net()
    dens = density_from_plain(plain, rho_init=-30.0)
    assert isinstance(dens[0], DensityConv2d) and isinstance(dens[4], DensityLinear)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        out = dens(x, mode=mode)
        expected = plain(x)
    assert out.mode == mode and out.mean.shape == (2, 10)
    torch.testing.assert_close(out.mean, expected, rtol=1e-5, atol=1e-6)
    var = out.diagonal()
    assert bool(torch.isfinite(var).all()) and bool((var >= -1e-12).all()) and float(var.max()) < 1e-8
    if mode == "full":
        assert out.cov.shape == (2, 10, 10)
    wide = density_from_plain(plain, rho_init=0.0)
    with torch.no_grad():
        assert float(wide(x, mode=mode).diagonal().max()) > 1e-6  # variances do propagate
    kl = dens.kl_divergence().detach()
    assert kl.shape == () and float(kl) > 0


def test_density_from_plain_rejects_unsupported_modules() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(TypeError, match="BatchNorm2d.*supported modules: nn.Linear"):
        density_from_plain(model)


def test_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(11)
    for layer in (DensityConv2d(2, 3, 3), DensityLinear(7, 4)):
        layer = layer.double()
        with torch.no_grad():
            layer.weight_mu.copy_(torch.randn(layer.weight_mu.shape, generator=gen, dtype=torch.float64))
            layer.weight_rho.copy_(torch.randn(layer.weight_rho.shape, generator=gen, dtype=torch.float64))
        shape = (-1, *([1] * (layer.weight_mu.dim() - 1)))
        std = layer.sigma2.sqrt().view(shape).expand_as(layer.weight_mu)
        ref = kl_divergence(Normal(layer.weight_mu, std), Normal(torch.zeros(()), torch.ones(()))).sum()
        torch.testing.assert_close(layer.kl_divergence(), ref.to(torch.float64))


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_zoo_models_with_their_input_normalisation_convert(name):
    """The zoo's models carry a Normalize in front; its density twin is exact (a per-channel affine map), so with
    near-zero weight variances the density model's mean is the plain model's softmax in both covariance modes."""
    from bayescomp.models import create_model

    torch.manual_seed(0)
    plain = nn.Sequential(*create_model(name, 10, (1, 28, 28), [0.13], [0.31]), nn.Softmax(dim=1)).eval()
    model = density_from_plain(plain, rho_init=-30.0)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = plain(x)
        for mode in ("diag", "full"):
            out = model(x, mode=mode)
            torch.testing.assert_close(out.mean, expected, rtol=1e-4, atol=1e-5)
            assert float(out.diagonal().max()) < 1e-6
        noisy = Moments(torch.rand(2, 1, 4, 4), var=torch.full((2, 1, 4, 4), 0.5))
        normalised = model[0](noisy)
        torch.testing.assert_close(normalised.var, noisy.var / 0.31 ** 2)


def layer_by_layer(seq: DensitySequential, x: Moments) -> Moments:
    for layer in seq:
        x = layer(x)
    return x


@pytest.mark.parametrize("padding", [0, 1])
def test_full_mode_fused_conv_pool_and_skipped_flatten_match_layer_by_layer(padding: int) -> None:
    """``DensitySequential`` fuses conv -> activation -> max-pool and skips a flatten before a Linear in full mode;
    the moments and every parameter gradient must equal those of the layers applied one by one (which build the
    full conv covariance and the dense zero-block matrix)."""
    torch.manual_seed(11)
    seq = DensitySequential(DensityConv2d(2, 3, 3, padding=padding), DensityReLU(), DensityMaxPool2d(2),
                            DensityConv2d(3, 4, 2), DensityTanh(), DensityMaxPool2d(2, stride=1),
                            DensityFlatten(), DensityLinear(36 if padding else 16, 5), DensitySoftmax()).double()
    with torch.no_grad():
        for layer in seq:
            if hasattr(layer, "weight_rho"):
                layer.weight_rho.uniform_(-3.0, 0.0)
                layer.bias.normal_()
    gen = torch.Generator().manual_seed(12)
    mean = torch.randn(3, 2, 10, 10, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 2, 100, 100, generator=gen, dtype=torch.float64) * 0.05
    x = Moments(mean=mean, cov=a @ a.transpose(-1, -2))  # a random input exercises the input-variance terms
    fused, plain = seq(x), layer_by_layer(seq, x)
    torch.testing.assert_close(fused.mean, plain.mean)
    torch.testing.assert_close(fused.cov, plain.cov)
    assert float(plain.cov.detach().abs().max()) > 1e-6  # the comparison is not between zeros

    def grads(out: Moments) -> list[Tensor]:
        seq.zero_grad()
        (out.mean.sin().sum() + out.cov.pow(2).sum() * 1e3).backward()
        return [p.grad.clone() for p in seq.parameters()]

    for g_fused, g_plain in zip(grads(seq(x)), grads(layer_by_layer(seq, x))):
        torch.testing.assert_close(g_fused, g_plain)
    # a plain tensor in full mode starts from its variances only (no zero covariance): the same moments
    point, reference = seq(x.mean, mode="full"), layer_by_layer(seq, Moments.deterministic(x.mean, "full"))
    torch.testing.assert_close(point.cov, reference.cov)
    torch.testing.assert_close(point.mean, reference.mean)
    # diag mode takes no shortcut and keeps its own result
    torch.testing.assert_close(seq(x.mean, mode="diag").mean, layer_by_layer(seq, Moments.deterministic(x.mean)).mean)
