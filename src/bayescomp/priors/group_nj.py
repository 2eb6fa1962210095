"""BC-GNJ: Bayesian Compression with the group normal-Jeffreys prior (Louizos, Ullrich, Welling, NIPS 2017).

Prior: p(z_i) ∝ 1/|z_i| (log-uniform) and w_ij | z_i ~ N(0, z_i²): one scale per input neuron (Linear) or per
output filter (Conv2d), so a scale that collapses removes a whole neuron/filter.
Posterior (paper Eq. 6): q(z_i) = N(mu_z, sigma_z²) (additive parametrisation, log alpha_i = log sigma_z² −
log mu_z²) and q(w_ij | z_i) = N(z_i mu_ij, z_i² sigma_ij²).

KL (Louizos et al. 2017): the group term uses the approximation of Molchanov et al. (2017, Eq. 14) with the constant −k1
so that it is >= 0 and vanishes as alpha -> inf; the conditional weight term is exactly
0.5 (−log sigma² + sigma² + mu² − 1), independent of z. Biases carry a N(0, 1) prior as in the reference code.
The conv KL uses −0.5·log sigma² and exp(log sigma²) (the reference code's 2017 conv bug, fixed there in 2018).

Training uses the local reparameterisation trick by default: the pre-activation is sampled from its Gaussian
conditional on z, so each mini-batch costs two matrix products (means and variances) instead of sampling weights.
``weight_sampling="batch"`` samples the weights once per mini-batch instead (one product; see
:func:`check_weight_sampling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bayescomp.priors.base import BayesianConv2d, BayesianLayer, BayesianLinear, PriorSpec, register_prior
from bayescomp.validate import check_choice
from bayescomp.noise import standard_normal, standard_normal_like
from bayescomp.priors.fused import draw_weights, in_layout, linear_lrt, memory_format_of, sample_lrt

K1, K2, K3 = 0.63576, 1.87320, 1.48695
_EPS = 1e-8


@dataclass
class GroupNJConfig:
    """Options of BC-GNJ, saved with every run.

    Args:
        clip_var: upper bound on the weight posterior variances sigma_ij², applied after every optimiser step.
            The reference code clips LeNet-300-100's first layer at 0.04. The bound trades accuracy for
            compression: while a weight's variance sits at the bound its KL cannot fall further, so a tight bound
            weakens the incentive to drop whole groups, and a loose one lets the weight noise grow until the
            posterior mean loses accuracy. Measured on LeNet-300-100 (30-60 epochs): 0.04 -> 1.4 % posterior-mean
            error but ~5x; 0.5 -> 2.2 % and ~18x; 0.2 (default) -> 1.9 % and ~10x. ``None`` disables it.
        init_log_sigma2: initial log-variance of weights and group scales (reference: -9).
        threshold: default log-alpha pruning threshold (keep group if log alpha < threshold); the automatic
            threshold search in :mod:`bayescomp.compress.masks` usually replaces it.
        z_sampling: ``"example"`` draws the group scales z once per example (the paper's estimator),
            ``"batch"`` once per mini-batch, shared by its examples, and ``"auto"`` (default) shares them only in a
            Linear layer whose input has no gradient, where that saves two products (see :func:`check_z_sampling`).
        weight_sampling: ``"local"`` samples each example's pre-activations (local reparameterisation, the
            paper's estimator) or ``"batch"`` draws the weights once per mini-batch (see
            :func:`check_weight_sampling`).
        group_kl_scale: multiplies the KL of the group scales z (see :func:`check_group_kl_scale`); 1.0 (default)
            is the paper's evidence lower bound.
    """

    clip_var: float | None = 0.2
    init_log_sigma2: float = -9.0
    threshold: float = -3.0
    z_sampling: str = "auto"
    weight_sampling: str = "local"
    group_kl_scale: float = 1.0
    name: str = "gnj"

    def __post_init__(self) -> None:
        check_z_sampling(self.z_sampling)
        check_weight_sampling(self.weight_sampling)
        check_group_kl_scale(self.group_kl_scale)


Z_SAMPLINGS = ("example", "batch", "auto")


def check_z_sampling(value: str) -> None:
    """Validate a ``z_sampling`` option (BC-GNJ and BC-GHS).

    ``"example"``: every example of a mini-batch gets its own draw of the group scales z, so the z noise averages
    over the batch and the gradient estimator has the variance of local reparameterisation (Kingma et al. 2015):
    O(1/B) in the batch size. ``"batch"``: one z per mini-batch, folded into the weight columns (Linear: mu z,
    sigma² z²). The z noise is then common to the batch and its contribution to the gradient variance no longer
    falls with B (it is that of sampling the group scales once per step); the weight noise stays local. The
    gradient stays unbiased. ``"auto"`` (default): ``"batch"`` in a Linear layer whose input carries no gradient
    (a network's first layer), ``"example"`` everywhere else (:func:`_z_shared`). Only there does the choice
    change the cost: a per-example z needs the gradient of the scaled input for both products (mean, variance),
    two products of the first layer that the plain network never computes; elsewhere the input gradient is needed
    anyway, and on conv layers z scales the outputs.

    Measured (docs/limits.md, "z shared by the mini-batch"; benchmarks/results/precision_parity_lenet300_mnist.md):
    with the compiled step, ``auto`` makes the LeNet-300-100 BC-GNJ step about 0.9x of per-example z; on the
    30-epoch recipe (bf16, seeds 0-2) it gave 2.22 ± 0.14 % error at 8.60 ± 0.45x against 2.17 ± 0.13 % at
    7.84 ± 0.64x per example, inside the seeds' spread as the protocol required, so it is the default. Conv nets
    (LeNet-5, ResNet-20) are unchanged by it.
    """
    check_choice(value, Z_SAMPLINGS, "z_sampling")


WEIGHT_SAMPLINGS = ("local", "batch")


def check_weight_sampling(value: str) -> None:
    """Validate a ``weight_sampling`` option (BC-GNJ and BC-GHS).

    ``"local"``: local reparameterisation (Kingma, Salimans, Welling 2015), the paper's estimator: each example's
    pre-activation is drawn from its Gaussian marginal, which costs a second matrix product (the variances) and
    its gradients, so a step has about twice the multiply-accumulates of a plain step. ``"batch"``: one draw of the
    weights w = z (mu + sigma eps) per mini-batch (as in Blundell et al. 2015), shared by its examples: one
    product, as in plain training, plus a few passes over the weights. The marginal of each pre-activation and the
    expected loss are the same, so the gradient stays unbiased; what changes is its variance: the weight noise is
    common to the batch, so its share of the gradient variance no longer falls with the batch size (the reason
    Kingma et al. prefer the local estimator). The group scales z still follow ``z_sampling``. Not in the paper;
    offered for speed. Measured (fp32, AVX2 CPU; ``benchmarks/results/epoch_cost_weight_sampling.md``,
    ``precision_parity_*.md``): the BC-GNJ epoch falls from 1.89x to 1.17x a plain epoch on LeNet-5 and from 3.63x to
    2.79x on LeNet-300-100, and training ends elsewhere on the error-compression trade-off (LeNet-300-100, 30
    epochs, 3 seeds: 1.84 % at 6.7x against 2.13 % at 8.0x; smaller posterior variances, so fewer bits saved), so
    ``"local"`` stays the default.
    """
    if value not in WEIGHT_SAMPLINGS:
        raise ValueError(f"weight_sampling must be one of {WEIGHT_SAMPLINGS}, got {value!r}")


def check_group_kl_scale(value: float) -> None:
    """Validate a ``group_kl_scale`` option (BC-GNJ and BC-GHS).

    The factor multiplies only the KL of the group scales, the sparsity-inducing part of the prior; the weights'
    KL keeps weight 1. At 1.0 the objective is the paper's evidence lower bound. A larger factor tempers the
    posterior of the scales toward the prior, as if the data set were that many times smaller for them: pruning
    a group saves that many more nats. Not in the paper; offered because a short schedule from a pretrained
    network barely moves the groups (ResNet-20/CIFAR-10 BC-GNJ, 10 epochs at 1.0: 8 of 848 groups past the
    paper's log alpha > -3, median -6.7; a 3x cut of the posterior mean lost 78 points before fine-tuning).
    Measured there at 10 (one seed): 419 groups past -3, the cut still far from lossless (60.8 % validation error
    before fine-tuning against 63.2 %), and after the same fine-tuning 9.18 % validation / 10.09 % test error
    against 9.72 % / 10.17 % at 1 (docs/limits.md).
    """
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"group_kl_scale must be a positive finite number, got {value!r}")


def kl_log_uniform_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """Approximate KL(N(mu, alpha mu²) || log-uniform) per element (Molchanov et al. 2017, Eq. 14, C = -k1)."""
    return -(K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1)


class _StandardNormalKL(torch.autograd.Function):
    """Sum of 0.5 (-log sigma² + sigma² + mu² - 1) with its closed-form gradient.

    The weight KL touches every weight twice per step (forward and backward); writing the gradient by hand
    (d/dmu = mu, d/dlog sigma² = 0.5 (sigma² - 1)) takes a third of the elementwise passes autograd would,
    which matters because these passes, not the matrix products, dominate a small network's step.
    """

    @staticmethod
    def forward(ctx, mu: torch.Tensor, log_sigma2: torch.Tensor, sigma2: torch.Tensor | None) -> torch.Tensor:
        sigma2 = log_sigma2.exp() if sigma2 is None else sigma2
        ctx.save_for_backward(mu, sigma2)
        total = sigma2.sum() - log_sigma2.sum() + torch.dot(mu.reshape(-1), mu.reshape(-1)) - mu.numel()
        return 0.5 * total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mu, sigma2 = ctx.saved_tensors
        grad_mu = mu * grad if ctx.needs_input_grad[0] else None
        grad_log_sigma2 = (sigma2 - 1.0).mul_(0.5 * grad) if ctx.needs_input_grad[1] else None
        return grad_mu, grad_log_sigma2, None


def kl_standard_normal(mu: torch.Tensor, log_sigma2: torch.Tensor,
                       sigma2: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of KL(N(mu, sigma²) || N(0, 1)) over all elements (closed form, hand-written gradient).

    ``sigma2``: exp(log_sigma2) when the caller has it already (detached; the forward's value is reused). Inside
    a compiled step the plain expression is used: the compiler fuses it and its gradient into one pass."""
    if torch.compiler.is_compiling():
        return 0.5 * (log_sigma2.exp() - log_sigma2 + mu.square() - 1.0).sum()
    return _StandardNormalKL.apply(mu, log_sigma2, None if sigma2 is None else sigma2.detach())


class _GroupNJMixin(BayesianLayer):
    """Parameters and posterior statistics shared by the linear and the conv layer."""

    graph_safe = True

    def _init_posterior(self, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, cfg: GroupNJConfig):
        self.config = cfg
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_sigma2 = nn.Parameter(torch.full_like(self.weight_mu, cfg.init_log_sigma2))
        self.weight_log_sigma2.data.add_(torch.randn_like(self.weight_mu) * 0.01)
        self.z_mu = nn.Parameter(1.0 + 0.01 * torch.randn(groups, device=weight.device))
        self.z_log_sigma2 = nn.Parameter(cfg.init_log_sigma2 + 0.01 * torch.randn(groups, device=weight.device))
        if bias is not None:
            self.bias_mu = nn.Parameter(bias.detach().clone())
            self.bias_log_sigma2 = nn.Parameter(torch.full_like(self.bias_mu, cfg.init_log_sigma2))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_log_sigma2", None)

    def _z_view(self, z: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-group vector onto the weight tensor."""
        shape = [1] * self.weight_mu.dim()
        shape[1 if self.group_dim == "in" else 0] = -1
        return z.view(shape)

    def group_log_alpha(self) -> torch.Tensor:
        return self.z_log_sigma2 - torch.log(self.z_mu.pow(2) + _EPS)

    def kl_divergence(self) -> torch.Tensor:
        kl = kl_log_uniform_approx(self.group_log_alpha()).sum()
        if self.config.group_kl_scale != 1.0:
            kl = kl * self.config.group_kl_scale
        kl = kl + kl_standard_normal(self.weight_mu, self.weight_log_sigma2, self._variance("weight_log_sigma2"))
        if self.bias_mu is not None:
            kl = kl + kl_standard_normal(self.bias_mu, self.bias_log_sigma2, self._variance("bias_log_sigma2"))
        return kl

    def _z_point(self) -> torch.Tensor:
        """The point estimate of z used for the posterior-mean network: E[z] = mu_z."""
        return self.z_mu

    def posterior_mean_weight(self) -> torch.Tensor:
        return self.weight_mu * self._z_view(self.z_mu)

    def posterior_weight_variance(self) -> torch.Tensor:
        """Var(w_ij) = sigma_z²(sigma_ij² + mu_ij²) + sigma_ij² mu_z² (as in the authors' reference code)."""
        z_var = self._z_view(self.z_log_sigma2.exp())
        z_mu2 = self._z_view(self.z_mu.pow(2))
        w_var = self.weight_log_sigma2.exp()
        return z_var * (w_var + self.weight_mu.pow(2)) + w_var * z_mu2

    def apply_constraints(self) -> None:
        if self.config.clip_var is not None:
            bound = math.log(self.config.clip_var)
            with torch.no_grad():
                self.weight_log_sigma2.clamp_(max=bound)
                if self.bias_log_sigma2 is not None:
                    self.bias_log_sigma2.clamp_(max=bound)

    def _sample_z(self, rows: int) -> torch.Tensor:
        """``rows`` draws of z, (rows, groups): one per example, or one row shared by the batch (:func:`_z_shared`)."""
        eps = standard_normal(rows, self.z_mu.numel(), device=self.z_mu.device, dtype=self.z_mu.dtype)
        return self.z_mu + eps * (0.5 * self.z_log_sigma2).exp()


class GroupScaledLinear(BayesianLinear):
    """``nn.Linear`` with one multiplicative scale z_i per input neuron (z_i scales column i of the weight): the
    constructor and the forward paths shared by the group priors (BC-GNJ, BC-GHS). A prior's mixin supplies the
    posterior (``_init_posterior``, ``_sample_z``, ``_z_point``, ``posterior_mean_weight``) and ``config_class``."""

    config_class: type

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight = torch.randn(out_features, in_features) / math.sqrt(in_features)
        self._init_posterior(weight, torch.zeros(out_features) if bias else None, in_features,
                             config or self.config_class())

    def posterior_mean_bias(self) -> torch.Tensor | None:
        return self.bias_mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deterministic:
            return F.linear(x, self.posterior_mean_weight(), self.bias_mu)
        if self.config.weight_sampling == "batch":
            return _shared_draw_linear(self, x)
        if self._fused_training():
            return _fused_linear(self, x)
        return _unfused_linear(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups=in"


class GroupScaledConv2d(BayesianConv2d):
    """``nn.Conv2d`` with one multiplicative scale z_c per output filter (z_c scales channel c, bias included):
    the constructor and the forward paths shared by the group priors, as :class:`GroupScaledLinear`."""

    config_class: type

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, config=None):
        super().__init__()
        template = self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._init_posterior(template.weight, template.bias, out_channels, config or self.config_class())

    def posterior_mean_bias(self) -> torch.Tensor | None:
        return None if self.bias_mu is None else self.bias_mu * self._z_point()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deterministic:
            return self._conv(x, self.posterior_mean_weight(), self.posterior_mean_bias())
        if self.config.weight_sampling == "batch":
            return _shared_draw_conv(self, x)
        if self._fused_training():
            return _fused_conv(self, x)
        return _unfused_conv(self, x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups=out")


class LinearGroupNJ(_GroupNJMixin, GroupScaledLinear):
    """Bayesian ``nn.Linear`` with a GNJ scale per input neuron (z_i scales column i of the weight)."""

    config_class = GroupNJConfig


class Conv2dGroupNJ(_GroupNJMixin, GroupScaledConv2d):
    """Bayesian ``nn.Conv2d`` with a GNJ scale per output filter (z_c scales output channel c, bias included)."""

    config_class = GroupNJConfig


def _z_shared(layer: BayesianLayer, x: torch.Tensor) -> bool:
    """Whether this training forward draws one z for the whole mini-batch: always with ``z_sampling="batch"``;
    with ``"auto"`` in a Linear layer whose input carries no gradient (a network's first layer) while gradients
    are being computed, where a z per example would cost the layer's two input-gradient products and a shared z,
    folded into the weight columns, costs none (see :func:`check_z_sampling`). Without gradients (Monte-Carlo
    predictions from a batch of copies, say) every example keeps its own z."""
    mode = layer.config.z_sampling
    return mode == "batch" or (mode == "auto" and isinstance(layer, BayesianLinear) and torch.is_grad_enabled()
                               and not x.requires_grad)


def _draw_z(layer: BayesianLayer, x: torch.Tensor, examples: int) -> tuple[torch.Tensor, bool]:
    """The group scales for this training forward and whether they are shared: one row (1, groups) when
    :func:`_z_shared` says so, else one row per example (``examples``, groups)."""
    shared = _z_shared(layer, x)
    return layer._sample_z(1 if shared else examples), shared


def _examples(x: torch.Tensor) -> int:
    """Number of examples of a Linear input (..., features): its first dimension; a 1-D input is one example."""
    return x.shape[0] if x.dim() > 1 else 1


def _per_example(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The rows of z (one per example, ``_sample_z``) shaped to multiply ``x`` of any rank: a vector for a single
    example, (B, 1, ..., 1, D) for token inputs, so all of an example's tokens share its z."""
    if x.dim() == 1:
        return z[0]
    if x.dim() > 2:
        return z.view(z.shape[0], *([1] * (x.dim() - 2)), z.shape[-1])
    return z


def _unfused_linear(layer: BayesianLinear, x: torch.Tensor) -> torch.Tensor:
    """Training forward of a group-scaled Linear layer (GNJ, GHS) with plain autograd ops, for inputs of any rank:
    z per example (rows of ``_sample_z``) broadcast over the token dimensions (see :class:`BayesianLinear`)."""
    z, shared = _draw_z(layer, x, _examples(x))
    bias_var = layer.bias_log_sigma2.exp() if layer.bias_mu is not None else None
    if shared:  # z scales the weight's columns, so an input without gradient needs no input-gradient product
        z = z[0]
        mean = F.linear(x, layer.weight_mu * z, layer.bias_mu)
        var = F.linear(x.pow(2), layer.weight_log_sigma2.exp() * z.pow(2), bias_var)
    else:
        x_scaled = x * _per_example(z, x)
        mean = F.linear(x_scaled, layer.weight_mu, layer.bias_mu)
        var = F.linear(x_scaled.pow(2), layer.weight_log_sigma2.exp(), bias_var)
    return mean + var.add(_EPS).sqrt() * standard_normal_like(mean)


def _unfused_conv(layer: BayesianConv2d, x: torch.Tensor) -> torch.Tensor:
    """Training forward of a group-scaled Conv2d layer (GNJ, GHS) with plain autograd ops: means and variances of
    the pre-activations by two convolutions, then z (per example and output filter) scales the sampled outputs."""
    mean = layer._conv(x, layer.weight_mu, layer.bias_mu)
    bias_var = layer.bias_log_sigma2.exp() if layer.bias_mu is not None else None
    var = layer._conv(x.pow(2), layer.weight_log_sigma2.exp(), bias_var)
    z = _draw_z(layer, x, x.shape[0])[0][:, :, None, None]
    return (mean + var.add(_EPS).sqrt() * standard_normal_like(mean)) * z


def _fused_linear(layer: BayesianLinear, x: torch.Tensor) -> torch.Tensor:
    """Training forward of a group-scaled Linear layer (GNJ, GHS) through :func:`linear_lrt`; same draws, in the
    same order, as the unfused forward (z first, then the output noise). Inputs of any rank are flattened to rows
    (B * T, D) and an example's z is repeated for each of its rows, so all its tokens share one z."""
    z, shared = _draw_z(layer, x, _examples(x))
    rows = x.reshape(-1, x.shape[-1])
    if shared:
        z = z[0]
    elif x.dim() > 2:
        tokens = math.prod(x.shape[1:-1])
        z = z.unsqueeze(1).expand(-1, tokens, -1).reshape(-1, z.shape[-1])
    sigma2 = layer._variance("weight_log_sigma2", fresh=True)
    bias_sigma2 = None if layer.bias_mu is None else layer._variance("bias_log_sigma2", fresh=True)
    noise = standard_normal(rows.shape[0], layer.out_features, device=x.device, dtype=x.dtype)
    out = linear_lrt(rows, z, layer.weight_mu, layer.weight_log_sigma2, sigma2, layer.bias_mu,
                     layer.bias_log_sigma2, bias_sigma2, noise)
    return out.reshape(*x.shape[:-1], layer.out_features)


def _fused_conv(layer: BayesianConv2d, x: torch.Tensor) -> torch.Tensor:
    """Training forward of a group-scaled Conv2d layer (GNJ, GHS): the two convolutions by autograd, the
    sampling and the output scaling by :func:`sample_lrt`; same draws as the unfused forward."""
    mean = layer._conv(x, layer.weight_mu, layer.bias_mu)
    variance = layer.weight_log_sigma2.exp()
    layer._variance_store("weight_log_sigma2", variance)
    bias_var = None
    if layer.bias_mu is not None:
        bias_var = layer.bias_log_sigma2.exp()
        layer._variance_store("bias_log_sigma2", bias_var)
    var = layer._conv(x * x, variance, bias_var)
    mean, var = in_layout(memory_format_of(layer.weight_mu), mean, var)
    z = _draw_z(layer, x, x.shape[0])[0][:, :, None, None]
    return sample_lrt(mean, var, standard_normal_like(mean), z)


def _draw(layer: BayesianLayer, name: str) -> torch.Tensor | None:
    """One draw mu + sigma eps of ``<name>_mu`` (``weight`` or ``bias``; None when the layer has none): through
    :func:`draw_weights` when the layer is fused (exp(log sigma²) cached for the KL), else with autograd ops."""
    mu, log_sigma2 = getattr(layer, f"{name}_mu"), getattr(layer, f"{name}_log_sigma2")
    if mu is None:
        return None
    eps = standard_normal_like(mu)
    if layer._fused_training():
        return draw_weights(mu, log_sigma2, layer._variance(f"{name}_log_sigma2", fresh=True), eps)
    return mu + (0.5 * log_sigma2).exp() * eps


def _shared_draw_linear(layer: BayesianLinear, x: torch.Tensor) -> torch.Tensor:
    """Training forward with ``weight_sampling="batch"`` (GNJ, GHS): z drawn as ``z_sampling`` says, then one
    draw of the weights and the bias for the whole mini-batch. A per-batch z scales the weight's columns (no input
    gradient needed in the first layer), a per-example z the inputs."""
    z, shared = _draw_z(layer, x, _examples(x))
    weight, bias = _draw(layer, "weight"), _draw(layer, "bias")
    if shared:
        return F.linear(x, weight * z[0], bias)
    return F.linear(x * _per_example(z, x), weight, bias)


def _shared_draw_conv(layer: BayesianConv2d, x: torch.Tensor) -> torch.Tensor:
    """Training forward with ``weight_sampling="batch"`` (GNJ, GHS): one convolution with one draw of the
    filters; z (per output filter) scales the filters and bias when drawn per batch, the outputs when per example."""
    z, shared = _draw_z(layer, x, x.shape[0])
    weight, bias = _draw(layer, "weight"), _draw(layer, "bias")
    if shared:
        return layer._conv(x, weight * z[0].view(-1, 1, 1, 1), None if bias is None else bias * z[0])
    out = layer._conv(x, weight, bias)
    return out * z.to(out.dtype)[:, :, None, None]


register_prior(PriorSpec(
    name="gnj",
    config_cls=GroupNJConfig,
    from_linear=LinearGroupNJ.from_linear,
    from_conv2d=Conv2dGroupNJ.from_conv2d,
    description="BC-GNJ: group normal-Jeffreys prior on neurons/filters (Louizos et al. 2017)",
))
