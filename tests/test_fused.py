"""Fused local-reparameterisation Functions (bayescomp.priors.fused) against autograd and the unfused layers."""

from __future__ import annotations

import pytest
import torch

from bayescomp.priors import PRIORS
from bayescomp.priors.base import bayesian_layers
from bayescomp.priors.fused import VarianceCache, linear_lrt, sample_lrt
from bayescomp.priors.group_nj import GroupNJConfig, LinearGroupNJ, kl_standard_normal


def _double(*shape: int, positive: bool = False) -> torch.Tensor:
    t = torch.randn(*shape, dtype=torch.float64)
    return (t.abs() + 0.1 if positive else t).requires_grad_()


@pytest.mark.parametrize("z_kind", ["none", "example", "batch"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_lrt_gradients_match_autograd_in_float64(z_kind, with_bias):
    """gradcheck: the hand-written backward against finite differences, every input that takes a gradient."""
    torch.manual_seed(0)
    batch, fan_in, fan_out = 5, 4, 3
    x = _double(batch, fan_in)
    z = {"none": None, "example": _double(batch, fan_in), "batch": _double(fan_in)}[z_kind]
    mu, log_s2 = _double(fan_out, fan_in), (torch.randn(fan_out, fan_in, dtype=torch.float64) - 2).requires_grad_()
    b_mu = _double(fan_out) if with_bias else None
    b_log_s2 = (torch.randn(fan_out, dtype=torch.float64) - 2).requires_grad_() if with_bias else None
    noise = torch.randn(batch, fan_out, dtype=torch.float64)

    def f(x, z, mu, log_s2, b_mu, b_log_s2):
        # the variances enter as exp(log s2) passed in detached: gradients must still reach log s2
        return linear_lrt(x, z, mu, log_s2, log_s2.exp(), b_mu, b_log_s2,
                          None if b_log_s2 is None else b_log_s2.exp(), noise)

    assert torch.autograd.gradcheck(f, (x, z, mu, log_s2, b_mu, b_log_s2), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("z_shape", [None, (3, 4, 1, 1), (1, 4, 1, 1)])
def test_sample_lrt_gradients_match_autograd_in_float64(z_shape):
    torch.manual_seed(1)
    mean, var = _double(3, 4, 2, 2), _double(3, 4, 2, 2, positive=True)
    z = None if z_shape is None else _double(*z_shape)
    noise = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, v, z: sample_lrt(m, v, noise, z), (mean, var, z), atol=1e-6)


def test_linear_lrt_equals_the_formula():
    """Output = x z mu^T + b + sqrt((x z)² sigma²^T + b_var + eps) * noise, computed independently."""
    torch.manual_seed(2)
    x, z = torch.randn(6, 5), torch.rand(6, 5) + 0.5
    mu, log_s2, b, b_log_s2 = torch.randn(4, 5), torch.randn(4, 5) - 3, torch.randn(4), torch.randn(4) - 3
    noise = torch.randn(6, 4)
    out = linear_lrt(x, z, mu, log_s2, log_s2.exp(), b, b_log_s2, b_log_s2.exp(), noise)
    xs = (x * z).double()
    mean = xs @ mu.double().T + b.double()
    var = xs.square() @ log_s2.double().exp().T + b_log_s2.double().exp()
    expected = mean + (var + 1e-8).sqrt() * noise.double()
    assert torch.allclose(out.double(), expected, atol=1e-5)


def _layer(prior: str, kind: str, z_sampling: str):
    spec = PRIORS[prior]
    config = spec.config_cls(z_sampling=z_sampling) if prior in ("gnj", "ghs") else spec.config_cls()
    torch.manual_seed(3)
    if kind == "linear":
        return spec.from_linear(torch.nn.Linear(7, 5), config), torch.randn(16, 7)
    return spec.from_conv2d(torch.nn.Conv2d(3, 5, 3, padding=1), config), torch.randn(4, 3, 6, 6)


def _step(layer, x: torch.Tensor, fused: bool, input_grad: bool = True):
    layer.fused = fused
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(input_grad)
    torch.manual_seed(11)
    out = layer(x)
    (out.square().sum() + layer.kl_divergence()).backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


CASES = [(p, k, z, g) for p in PRIORS for k in ("linear", "conv") for z in ("example", "batch", "auto")
         for g in (True, False) if (z == "example" and g) or p in ("gnj", "ghs")]


@pytest.mark.parametrize("prior,kind,z_sampling,input_grad", CASES)
def test_fused_layer_equals_unfused_layer_with_the_same_noise(prior, kind, z_sampling, input_grad):
    """Same seed, same draws in the same order: outputs, input gradients and parameter gradients agree, with and
    without a gradient on the input (which decides what ``z_sampling="auto"`` does)."""
    layer, x = _layer(prior, kind, z_sampling)
    out_f, gx_f, grads_f = _step(layer, x, fused=True, input_grad=input_grad)
    out_u, gx_u, grads_u = _step(layer, x, fused=False, input_grad=input_grad)
    assert torch.allclose(out_f, out_u, rtol=1e-5, atol=1e-6)
    if input_grad:
        assert torch.allclose(gx_f, gx_u, rtol=1e-4, atol=1e-5)
    else:
        assert gx_f is None and gx_u is None
    assert grads_f.keys() == grads_u.keys() and grads_f
    for name in grads_f:
        scale = grads_u[name].abs().max().clamp_min(1.0)
        assert (grads_f[name] - grads_u[name]).abs().max() <= 1e-5 * scale, name


def test_batch_z_draws_one_scale_per_batch_and_example_z_one_per_example():
    """With z per batch every example sees the same z: the mean output of two identical inputs is the same up to
    the (tiny) weight noise; with z per example they differ by the group noise."""
    for z_sampling, same in (("batch", True), ("example", False)):
        layer = LinearGroupNJ(6, 3, config=GroupNJConfig(z_sampling=z_sampling, init_log_sigma2=-30))
        with torch.no_grad():
            layer.z_log_sigma2.fill_(0.0)  # unit group noise, negligible weight noise
        x = torch.ones(2, 6)
        out = layer(x)
        assert torch.allclose(out[0], out[1], atol=1e-3) == same, z_sampling


@pytest.mark.parametrize("prior", ["gnj", "ghs"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("fused", [True, False])
def test_auto_z_is_shared_exactly_where_the_input_has_no_gradient_in_a_linear_layer(prior, kind, fused):
    """``auto`` draws what ``batch`` draws for a Linear layer whose input carries no gradient and what ``example``
    draws otherwise (conv layers always): same seed, same outputs and parameter gradients."""
    for input_grad in (True, False):
        shared = kind == "linear" and not input_grad
        layer, x = _layer(prior, kind, "auto")
        auto = _step(layer, x, fused=fused, input_grad=input_grad)
        twin, _ = _layer(prior, kind, "batch" if shared else "example")
        twin.load_state_dict(layer.state_dict())
        expected = _step(twin, x, fused=fused, input_grad=input_grad)
        assert torch.equal(auto[0], expected[0]), (input_grad, shared)
        for name, grad in expected[2].items():
            assert torch.allclose(auto[2][name], grad, rtol=1e-6, atol=1e-7), name


@pytest.mark.parametrize("prior", ["gnj", "ghs"])
def test_auto_z_stays_per_example_without_gradients(prior):
    """Monte-Carlo predictions from a batch of copies of one input need independent draws: without gradients
    ``auto`` draws z per example even in a Linear layer, exactly as ``example`` does."""
    layer, x = _layer(prior, "linear", "auto")
    twin, _ = _layer(prior, "linear", "example")
    twin.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.manual_seed(5)
        auto = layer(x)
        torch.manual_seed(5)
        assert torch.equal(auto, twin(x))


def _products(run) -> int:
    """Matrix products (mm, addmm, bmm) that ``run()`` dispatches, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {"mm", "addmm", "bmm"}

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += func.__name__.split(".")[0] in names
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.calls


@pytest.mark.parametrize("fused", [True, False])
def test_shared_z_saves_the_first_layers_input_gradient_products(fused):
    """The reason for ``auto``: with a leaf input a per-example z costs two input-gradient products (mean and
    variance paths) that a shared z, folded into the weight columns, does not; with an input that needs its
    gradient both cost the same."""
    counts = {}
    for z_sampling in ("example", "auto"):
        for input_grad in (False, True):
            layer, x = _layer("gnj", "linear", z_sampling)
            counts[z_sampling, input_grad] = _products(lambda: _step(layer, x, fused=fused, input_grad=input_grad))
    assert counts["auto", False] == counts["example", False] - 2
    assert counts["auto", True] == counts["example", True]


def test_unknown_z_sampling_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="z_sampling must be one of.*'layer'"):
        GroupNJConfig(z_sampling="layer")
    with pytest.raises(ValueError, match="z_sampling"):
        PRIORS["ghs"].config_cls(z_sampling="")


def test_variance_cache_reuses_within_a_step_and_refreshes_after_in_place_updates():
    """The KL reuses the forward's exp(log sigma²); an optimiser step (in place) invalidates it, so the KL never
    sees a stale variance."""
    layer = LinearGroupNJ(5, 4)
    layer(torch.randn(3, 5))
    cached = layer._variance("weight_log_sigma2")
    assert cached is layer._variance("weight_log_sigma2")
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    loss = layer(torch.randn(3, 5)).sum() + layer.kl_divergence()
    loss.backward()
    optimizer.step()
    fresh = layer._variance("weight_log_sigma2")
    assert fresh is not cached and torch.equal(fresh, layer.weight_log_sigma2.detach().exp())
    expected = kl_standard_normal(layer.weight_mu, layer.weight_log_sigma2)
    got = kl_standard_normal(layer.weight_mu, layer.weight_log_sigma2, layer._variance("weight_log_sigma2"))
    assert torch.allclose(got, expected)
    cache = VarianceCache()
    t = torch.zeros(3)
    first = cache.get("t", t)
    t.add_(1.0)
    assert torch.equal(cache.get("t", t), torch.ones(3).exp()) and torch.equal(first, torch.ones(3))


def test_fused_layers_train_under_bfloat16_autocast_with_float32_gradients():
    """Under autocast the products run in bfloat16 but every gradient reaching a parameter is float32; the mean
    parameters' gradients are close to the float32 step's (bf16 keeps ~3 significant digits). The log-variance
    gradients are only checked finite: at sigma² ~ e^-9 the bf16 variance products are dominated by rounding."""
    from bayescomp import bayesify
    from bayescomp.models import create_model

    torch.manual_seed(4)
    model = bayesify(create_model("lenet5", 10, (1, 28, 28), [0.13], [0.31]), "gnj")
    x = torch.rand(8, 1, 28, 28)
    grads = {}
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().logsumexp(1).sum().backward()
        grads[bf16] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, g in grads[True].items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        if "log_sigma2" in name:
            continue
        ref = grads[False][name]
        assert (g - ref).norm() <= 0.1 * ref.norm() + 1e-6, name
    assert any(layer.fused for _, layer in bayesian_layers(model))


def test_clipped_log_uniform_kl_matches_the_autograd_formula_and_its_gradient():
    """Value against kl_log_uniform_approx of the clipped log alpha (independent autograd code); gradient by
    gradcheck in float64, with weights on both sides of the clip bounds."""
    from bayescomp.priors.fused import kl_log_uniform_clipped, log_theta2
    from bayescomp.priors.group_nj import kl_log_uniform_approx

    torch.manual_seed(6)
    mu = torch.randn(40, dtype=torch.float64) * 2
    mu[-5:] = 1e-3  # tiny means: log alpha above the upper clip
    log_s2 = torch.linspace(-14, 6, 40, dtype=torch.float64)
    log_alpha = (log_s2 - torch.log(mu.square() + 1e-8)).clamp(-8, 8)
    assert (log_alpha == 8).any() and (log_alpha == -8).any() and ((log_alpha > -8) & (log_alpha < 8)).any()
    expected = kl_log_uniform_approx(log_alpha).sum()
    got = kl_log_uniform_clipped(mu, log_s2, log_theta2(mu), -8.0, 8.0)
    assert torch.allclose(got, expected, rtol=1e-12)
    mu.requires_grad_()
    log_s2.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda m, s: kl_log_uniform_clipped(m, s, log_theta2(m.detach()), -8.0, 8.0), (mu, log_s2), atol=1e-6)
