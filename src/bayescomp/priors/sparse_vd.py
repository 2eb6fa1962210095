"""Sparse VD: Sparse Variational Dropout (Molchanov, Ashukha, Vetrov, ICML 2017).

Prior: every weight has its own improper log-uniform prior p(|w_ij|) ∝ 1/|w_ij|, so the method prunes single
weights (unstructured sparsity), not neurons or filters.
Posterior: q(w_ij) = N(theta_ij, alpha_ij theta_ij²), a Gaussian dropout posterior with one dropout rate per weight.
Additive reparameterisation (paper Sec. 4.3): the posterior is parametrised by (theta_ij, sigma_ij²) and sampled as
w = theta + sigma * eps, with log alpha_ij = log sigma_ij² − log theta_ij² derived from the two. With the
multiplicative form w = theta (1 + sqrt(alpha) eps) the gradient with respect to theta carries the noise and has
huge variance for large alpha; with sigma² as the free parameter, dw/dtheta = 1 and that noise is gone.

KL: KL(q || p) has no closed form; we use the paper's approximation (Eq. 14) with the constant C = −k1, so that the
KL is >= 0 and vanishes as alpha -> inf (shared with BC-GNJ, :func:`kl_log_uniform_approx`). As in the authors'
code, log alpha is clipped to [-8, 8] before it enters the KL and the pruning decision.

Pruning: a weight whose log alpha reaches the threshold (3, i.e. dropout rate alpha/(1+alpha) > 0.95) carries
essentially only noise; it is set to zero in the test-time network (paper Sec. 4.4). The mask is per weight, so
the savings come from sparse storage; :meth:`group_log_alpha` additionally lets the shared structured pruning remove
whole input neurons (Linear) or filters (Conv2d) whose weights are all pruned.

Training uses the local reparameterisation trick (paper Sec. 2.2): pre-activations are sampled from their Gaussian
marginal, costing two matrix products (mean, variance) per mini-batch. Biases are plain deterministic parameters
without prior or KL, as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bayescomp.priors.base import BayesianConv2d, BayesianLinear, PerWeightGaussian, PriorSpec, register_prior
from bayescomp.priors.fused import kl_log_uniform_clipped, log_theta2
from bayescomp.priors.group_nj import kl_log_uniform_approx
from bayescomp.validate import check_choice

_EPS = 1e-8
TRAIN_CLIP_STYLES = ("mean_and_variance", "authors")


@dataclass
class SparseVDConfig:
    """Options of Sparse VD, saved with every run.

    Args:
        threshold: a weight is pruned when its (clipped) log alpha >= threshold. The paper (Sec. 4.4) and the
            authors' code (``thresh=3``) use 3, i.e. a dropout rate above 0.95.
        init_log_sigma2: initial log sigma² of every weight (plus 0.01 N(0, 1) jitter); the authors' layers use
            ``ard_init=-10``, a near-deterministic start from the pretrained weights.
        log_alpha_clip: bounds on log alpha in the KL and in the pruning statistic; the authors' layers clip to
            [-8, 8] (``clip(mtx, to=8)``) to keep the KL approximation and its gradient in its fitted range.
        train_clip: zero the weights with log alpha >= threshold in the training forward pass as well (the
            authors' ``train_clip`` option), so training sees the network that will be deployed. We zero the mean
            and the variance of those weights, as the authors' conv layer does (their dense layer zeroes the mean
            only).
        train_clip_style: what ``train_clip`` zeroes, and the form of the training variance.
            ``"mean_and_variance"`` (default): the pruned weights' mean and variance in every layer; the variance
            is sigma². ``"authors"``: as the authors' Lasagne layers (bayesgroup/variational-dropout-sparsifies-dnn,
            ``nets/layers.py``): the variance is exp(clip(log alpha)) theta², and a Linear layer zeroes only the
            mean of its pruned weights, so they keep adding noise, their sigma² keeps a data gradient and a weight
            can come back below the threshold; a conv layer zeroes both. The LeNet-5 script trains this way
            (``train_clip=True``); it sits between our clipped and unclipped trainings (docs/limits.md, "Sparse
            VD"). It takes the plain autograd path (no fused Function). Found by reading the reference code,
            not stated in the paper.
        prune_threshold: the log alpha threshold of the deployed network, when it should differ from
            ``threshold``; None: ``threshold``. Read only after training (a post-training setting: changing it
            reuses a trained posterior), so it can be chosen on the validation split, as the authors advise
            (3 sits between the two modes of the log alpha histogram; bayesgroup/variational-dropout-sparsifies-dnn
            issue 9). The paper fixes 3 for both; with ``train_clip`` the weights above ``threshold`` were already
            zero in training, so a ``prune_threshold`` above it would bring back weights the training never used.
        name: registry key of the prior.
    """

    threshold: float = 3.0
    init_log_sigma2: float = -10.0
    log_alpha_clip: tuple[float, float] = (-8.0, 8.0)
    train_clip: bool = True
    train_clip_style: str = "mean_and_variance"
    prune_threshold: float | None = None
    name: str = "svd"

    def __post_init__(self) -> None:
        check_choice(self.train_clip_style, TRAIN_CLIP_STYLES, "train_clip_style")
        low, high = (float(v) for v in self.log_alpha_clip)  # configs read back from JSON give a list
        if not low < high:
            raise ValueError(f"log_alpha_clip must be (low, high) with low < high, got {self.log_alpha_clip}")
        self.log_alpha_clip = (low, high)
        if self.prune_threshold is not None:
            self.prune_threshold = float(self.prune_threshold)

    @property
    def deploy_threshold(self) -> float:
        """The log alpha threshold of the pruned network: ``prune_threshold``, else ``threshold``."""
        return self.threshold if self.prune_threshold is None else self.prune_threshold


class _SparseVDMixin(PerWeightGaussian):
    """Parameters and posterior statistics shared by the linear and the conv layer."""

    graph_safe = True

    def _init_posterior(self, weight: torch.Tensor, bias: torch.Tensor | None, cfg: SparseVDConfig) -> None:
        self.config = cfg
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_sigma2 = nn.Parameter(
            torch.full_like(self.weight_mu, cfg.init_log_sigma2) + 0.01 * torch.randn_like(self.weight_mu))
        if bias is not None:
            self.bias_mu = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias_mu", None)

    def weight_log_alpha(self) -> torch.Tensor:
        """Per-weight log alpha = log sigma² − log theta², clipped to ``log_alpha_clip`` (authors' code)."""
        low, high = self.config.log_alpha_clip
        log_alpha = self.weight_log_sigma2 - torch.log(self.weight_mu.pow(2) + _EPS)
        return log_alpha.clamp(low, high)

    @torch.no_grad()
    def _keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Same as ``weight_log_alpha() < threshold`` without the clamp pass (it only decides the edge cases);
        ``threshold`` defaults to the deployed network's (:attr:`SparseVDConfig.deploy_threshold`)."""
        low, high = self.config.log_alpha_clip
        threshold = self.config.deploy_threshold if threshold is None else threshold
        if threshold > high or threshold <= low:
            return torch.full_like(self.weight_mu, threshold > high, dtype=torch.bool)
        log_theta2 = self.weight_mu.square().add_(_EPS).log_()
        return torch.lt(self.weight_log_sigma2 - log_theta2, threshold)

    def weight_keep_mask(self) -> torch.Tensor:
        """Keep weight ij iff its log alpha < the deployed threshold (paper Sec. 4.4: 3); bool, shaped like the
        weight."""
        return self._keep_mask()

    @torch.no_grad()
    def _train_keep_mask(self) -> torch.Tensor:
        """:meth:`weight_keep_mask` from log(theta² + eps) computed once per step; the KL after it reuses it."""
        low, high = self.config.log_alpha_clip
        threshold = self.config.threshold
        if threshold > high or threshold <= low:
            return self._keep_mask(threshold)
        log_theta2_now = self._variance_cache().get("log_theta2", self.weight_mu, fresh=True, fn=log_theta2)
        return torch.lt(self.weight_log_sigma2 - log_theta2_now, threshold)

    def _fused_training(self) -> bool:
        """The fused path computes the variance as sigma²; the authors' style takes the autograd ops."""
        return super()._fused_training() and self.config.train_clip_style != "authors"

    def _train_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the training forward (:attr:`SparseVDConfig.train_clip_style`)."""
        if self.config.train_clip_style != "authors":
            return super()._train_weights()
        log_alpha = self.weight_log_alpha()
        variance = log_alpha.exp() * self.weight_mu.square()
        mean = self.weight_mu
        if self.config.train_clip:  # the clipped log alpha decides as _keep_mask does, edge cases included
            keep = log_alpha.detach() < self.config.threshold
            mean = mean * keep
            if self.group_dim == "out":  # the authors' conv layer zeroes both; their dense layer the mean only
                variance = variance * keep
        return mean, variance

    def group_log_alpha(self) -> torch.Tensor:
        """Per group, the minimum log alpha over its weights (groups: input columns of Linear, filters of Conv2d).

        Sparse VD has no group variable; the minimum makes the group statistic consistent with the weight mask:
        a group falls below the threshold iff at least one of its weights is kept, so structured pruning with the
        same threshold removes exactly the neurons/filters whose weights are all zero already.
        """
        log_alpha = self.weight_log_alpha()
        if self.group_dim == "in":
            return log_alpha.amin(dim=0)
        return log_alpha.flatten(1).amin(dim=1)

    def kl_divergence(self) -> torch.Tensor:
        """Sum over weights of the approximate KL to the log-uniform prior (paper Eq. 14, C = −k1); the fused
        layer computes it with a closed-form gradient (:func:`kl_log_uniform_clipped`)."""
        if not self._fused_training():
            return kl_log_uniform_approx(self.weight_log_alpha()).sum()
        low, high = self.config.log_alpha_clip
        theta = self._variance_cache().get("log_theta2", self.weight_mu, fn=log_theta2)
        return kl_log_uniform_clipped(self.weight_mu, self.weight_log_sigma2, theta, low, high)

    def posterior_mean_weight(self) -> torch.Tensor:
        """theta with the pruned weights set to zero: the network used at test time (paper Sec. 4.4)."""
        return self.weight_mu * self._keep_mask()

    def posterior_weight_variance(self) -> torch.Tensor:
        """sigma² of every weight (the additive parametrisation's variance, = alpha theta² where unclipped)."""
        return self.weight_log_sigma2.exp()

    def apply_constraints(self) -> None:
        """Nothing to do: log alpha is clipped where it is used (KL, mask), so the parameters may roam freely."""


class LinearSparseVD(_SparseVDMixin, BayesianLinear):
    """Bayesian ``nn.Linear`` with a Sparse VD posterior on every weight; groups are input columns."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: SparseVDConfig | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        template = nn.Linear(in_features, out_features, bias)
        self._init_posterior(template.weight, template.bias, config or SparseVDConfig())


    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prior=svd"


class Conv2dSparseVD(_SparseVDMixin, BayesianConv2d):
    """Bayesian ``nn.Conv2d`` with a Sparse VD posterior on every weight; groups are output filters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, config: SparseVDConfig | None = None):
        super().__init__()
        template = self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._init_posterior(template.weight, template.bias, config or SparseVDConfig())


    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, prior=svd")


register_prior(PriorSpec(
    name="svd",
    config_cls=SparseVDConfig,
    from_linear=LinearSparseVD.from_linear,
    from_conv2d=Conv2dSparseVD.from_conv2d,
    description="Sparse VD: per-weight log-uniform prior (Molchanov et al. 2017)",
))
