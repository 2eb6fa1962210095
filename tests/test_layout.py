"""Channels-last (NHWC) training of Bayesian conv layers: the layout is read from the weights, noise is drawn in
it, and a sampled forward and backward compute the same function as in the default layout."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.models import create_model
from bayescomp.priors import PRIORS
from bayescomp.noise import set_noise_source, standard_normal_like
from bayescomp.priors.fused import in_layout, memory_format_of
from bayescomp.train import _to_channels_last

CL, NCHW = torch.channels_last, torch.contiguous_format


def _nhwc_strided(t: torch.Tensor) -> bool:
    """Independent of memory_format_of: NHWC order means the channel stride is the smallest non-trivial one."""
    n, c, h, w = t.shape
    return t.stride() == (h * w * c, 1, w * c, c)


@pytest.mark.parametrize("shape", [(20, 1, 5, 5), (50, 20, 5, 5), (16, 16, 3, 3)])
def test_memory_format_is_read_from_the_weight_strides_even_with_one_input_channel(shape):
    weight = torch.randn(shape)
    assert memory_format_of(weight) == NCHW
    nhwc = weight.to(memory_format=CL)
    assert _nhwc_strided(nhwc)
    assert memory_format_of(nhwc) == CL
    if shape[1] == 1:  # the case the stride reading exists for: contiguous in both senses
        assert nhwc.is_contiguous() and nhwc.is_contiguous(memory_format=CL)
    assert memory_format_of(torch.randn(4, 3)) == NCHW


def test_a_one_by_one_kernel_on_one_channel_is_ambiguous_and_stays_in_the_default_layout():
    assert memory_format_of(torch.randn(8, 1, 1, 1).to(memory_format=CL)) == NCHW


@pytest.mark.parametrize("source", ["torch", "philox"])
def test_standard_normal_like_keeps_the_layout_and_is_standard_normal(source, monkeypatch):
    monkeypatch.setattr("bayescomp.noise._source", {"name": None})
    set_noise_source(source)
    base = torch.empty(64, 16, 12, 12)
    torch.manual_seed(3)
    contiguous = standard_normal_like(base)
    torch.manual_seed(3)
    assert torch.equal(contiguous, standard_normal_like(base))  # the seed fixes the draws
    nhwc = standard_normal_like(base.to(memory_format=CL))
    assert nhwc.shape == base.shape and _nhwc_strided(nhwc)
    for sample in (contiguous, nhwc):
        assert abs(float(sample.mean())) < 0.01 and abs(float(sample.std()) - 1) < 0.01
    per_channel = nhwc.transpose(0, 1).reshape(16, -1)  # no channel is favoured by the NHWC fill order
    assert float((per_channel.mean(1)).abs().max()) < 0.05


def test_in_layout_converts_only_what_differs():
    a = torch.randn(2, 3, 4, 4).to(memory_format=CL)
    b = torch.randn(2, 3, 4, 4)
    a2, b2 = in_layout(CL, a, b)
    assert a2 is a and _nhwc_strided(b2) and torch.equal(b2, b)


def _index_noise(t: torch.Tensor) -> torch.Tensor:
    """Noise that depends on the logical index only, so both layouts see the same values."""
    return torch.sin(torch.arange(t.numel(), dtype=torch.float32) * 0.37).reshape(t.shape).to(t.dtype)


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_channels_last_sampled_training_step_matches_the_default_layout(prior, monkeypatch):
    """Every registered prior: with the noise fixed by logical index and the same seed for the group scales, the
    sampled forward and every gradient agree between NCHW and NHWC (fp32); so the NHWC default of bf16 CPU training
    changes only the speed and the order in which the noise is drawn."""
    for module_name in ("bayescomp.priors.base", "bayescomp.priors.group_nj"):
        monkeypatch.setattr(sys.modules[module_name], "standard_normal_like", _index_noise)
    torch.manual_seed(0)
    model = bayesify(create_model("lenet5", 10, (1, 28, 28), [0.13], [0.31]), prior)
    model.train()
    nhwc = copy.deepcopy(model)
    hook = _to_channels_last(nhwc)
    images = torch.randn(8, 1, 28, 28)
    results = []
    for net in (model, nhwc):
        torch.manual_seed(1)
        out = net(images)
        (out.logsumexp(1).sum() + sum(m.kl_divergence() for m in net.modules()
                                       if hasattr(m, "kl_divergence") and m is not net)).backward()
        results.append((out.detach(), {n: p.grad for n, p in net.named_parameters()}))
    hook.remove()
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5), prior
    checked = 0
    for name, grad in results[0][1].items():
        if grad is None:
            assert results[1][1][name] is None, name
            continue
        assert torch.allclose(results[1][1][name], grad, rtol=1e-4, atol=1e-6), (prior, name)
        checked += 1
    assert checked >= 8, prior  # means and variances of all four layers took gradients


def test_cpu_training_of_a_bayesian_conv_net_runs_channels_last_by_default(monkeypatch):
    """The default the epoch-cost benchmark measures: ``fit`` on the CPU, in fp32 or bf16, moves a Bayesian conv net
    to NHWC for training and hands it back in the default layout; ``channels_last=False`` keeps NCHW."""
    import bayescomp.train as train_module

    seen = []
    real = train_module._to_channels_last
    monkeypatch.setattr(train_module, "_to_channels_last", lambda m: seen.append(m) or real(m))
    model = bayesify(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), "gnj")
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    from bayescomp import make_bundle

    bundle = make_bundle(torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x[:8], y[:8]),
                         torch.utils.data.TensorDataset(x[:8], y[:8]))
    for precision, layout, expected in (("fp32", None, 1), ("bf16", None, 1), ("fp32", False, 0)):
        seen.clear()
        train_module.fit(model, bundle, train_module.TrainConfig(epochs=1, batch_size=16), progress=False,
                         log=lambda *_: None, precision=precision, channels_last=layout)
        assert len(seen) == expected, (precision, layout)
        assert all(p.is_contiguous() for p in model.parameters())
