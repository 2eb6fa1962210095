"""``group_kl_scale``: a factor on the KL of the group scales only (BC-GNJ and BC-GHS), checked against
independent closed forms, validated, and shown to change what training prunes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.objective import variational_loss
from bayescomp.priors import Conv2dGroupHS, Conv2dGroupNJ, GroupHSConfig, GroupNJConfig, LinearGroupHS, LinearGroupNJ
from bayescomp.priors.group_hs import kl_lognormal_gamma, kl_lognormal_invgamma

K1, K2, K3 = 0.63576, 1.87320, 1.48695


def _randomise(layer: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its initial value, so no term of the KL is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "log_sigma2" in name:
                p.copy_(torch.empty(p.shape).uniform_(-5, -1, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return layer


def _weight_kl(layer: nn.Module) -> torch.Tensor:
    total = torch.zeros(())
    for prefix in ("weight", "bias"):
        mu, log_s2 = getattr(layer, f"{prefix}_mu"), getattr(layer, f"{prefix}_log_sigma2")
        total = total + 0.5 * torch.sum(-log_s2 + log_s2.exp() + mu**2 - 1)
    return total


def _gnj_group_kl(layer: nn.Module) -> torch.Tensor:
    # Molchanov et al. (2017) Eq. 14 with C = -k1, written out here from the published constants
    log_alpha = layer.z_log_sigma2 - torch.log(layer.z_mu**2 + 1e-8)
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * torch.log1p(torch.exp(-log_alpha)) - K1
    return -neg_kl.sum()


def _ghs_group_kl(layer: nn.Module) -> torch.Tensor:
    gm, gl = layer.scale_global_mu, layer.scale_global_log_sigma2
    lm, ll = layer.scale_group_mu, layer.scale_group_log_sigma2
    log_rate = -2.0 * math.log(layer.config.tau0)
    return (kl_lognormal_gamma(gm[0], gl[0], 0.5, log_rate) + kl_lognormal_invgamma(gm[1], gl[1], 0.5, 0.0)
            + kl_lognormal_gamma(lm[0], ll[0], 0.5, 0.0).sum() + kl_lognormal_invgamma(lm[1], ll[1], 0.5, 0.0).sum())


CASES = [
    (lambda c: LinearGroupNJ(6, 4, config=c), GroupNJConfig, _gnj_group_kl),
    (lambda c: Conv2dGroupNJ(3, 5, 3, config=c), GroupNJConfig, _gnj_group_kl),
    (lambda c: LinearGroupHS(6, 4, config=c), GroupHSConfig, _ghs_group_kl),
    (lambda c: Conv2dGroupHS(3, 5, 3, config=c), GroupHSConfig, _ghs_group_kl),
]


@pytest.mark.parametrize("make, config_class, group_kl", CASES)
@pytest.mark.parametrize("scale", [0.25, 1.0, 7.5])
@torch.no_grad()
def test_the_factor_multiplies_the_group_kl_and_leaves_the_weight_kl(make, config_class, group_kl, scale):
    layer = _randomise(make(config_class(group_kl_scale=scale)))
    expected = scale * group_kl(layer) + _weight_kl(layer)
    torch.testing.assert_close(layer.kl_divergence(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("config_class", [GroupNJConfig, GroupHSConfig])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_factor_that_is_not_positive_and_finite_is_refused(config_class, bad):
    with pytest.raises(ValueError, match="group_kl_scale"):
        config_class(group_kl_scale=bad)


def _train(scale: float) -> torch.Tensor:
    """Logistic regression whose 12 inputs carry a weak signal each: group log alphas after training."""
    torch.manual_seed(0)
    n = 600
    x = torch.randn(n, 12)
    y = (x @ torch.linspace(0.05, 0.6, 12) + 0.5 * torch.randn(n) > 0).long()
    model = bayesify(nn.Sequential(nn.Linear(12, 2)), "gnj", {"group_kl_scale": scale})
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        rows = torch.randint(0, n, (100,))
        loss, _, _ = variational_loss(model(x[rows]), y[rows], model, n_train=n)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model[0].apply_constraints()
    return model[0].group_log_alpha().detach()


def test_a_larger_factor_prunes_more_groups_and_the_weakest_first():
    plain, tempered = _train(1.0), _train(3.0)
    assert torch.all(tempered > plain)  # every group's dropout rate rises
    assert (tempered > -3).sum() > (plain > -3).sum()
    # the inputs with the weakest signal (the first ones) are those the tempered posterior drops; the strongest stays
    dropped = torch.nonzero(tempered > -3).flatten()
    assert dropped.float().mean() < 5.5 and 11 not in dropped.tolist()
