"""The small interface every Bayesian layer implements, and the registry of priors.

A prior (method) differs from another only in its layers, its KL and the statistic that says which groups it can
do without; everything else in the pipeline (training, masks, shrinking, bits, packing, reports) goes through
this interface. Contracts:

* ``forward`` returns only the output (drop-in for ``nn.Linear`` / ``nn.Conv2d``); noise is drawn fresh in every
  call and never stored in registered buffers.
* ``kl_divergence()`` is a **sum** over all the layer's weights and groups; the objective divides the sum over
  layers by the number of training examples (see :mod:`bayescomp.objective`).
* ``deterministic = True`` switches to the posterior-mean network used for evaluation and compression.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bayescomp.noise import standard_normal, standard_normal_like
from bayescomp.priors.fused import VarianceCache, in_layout, linear_lrt, memory_format_of, sample_lrt


class BayesianLayer(nn.Module):
    """Base class of Bayesian Linear/Conv2d layers with one scale per group.

    ``group_dim`` says where the groups sit: ``"in"`` (one group per input feature of a Linear layer) or
    ``"out"`` (one group per output filter of a Conv2d layer), following Louizos et al. (2017), Sec. 3.
    """

    group_dim: Literal["in", "out"]
    deterministic: bool = False
    #: training forward through the fused Functions of :mod:`bayescomp.priors.fused` (False: the plain autograd
    #: ops, kept as the reference the fused path is tested against and for the benchmark's unfused variant)
    fused: bool = True
    #: forward, KL and ``apply_constraints`` are pure tensor code (no host reads, no value-dependent Python), so
    #: ``fit(cuda_graphs=True)`` may capture the training step (:mod:`bayescomp.cuda_graphs`)
    graph_safe: bool = False

    def _fused_training(self) -> bool:
        """Whether the training forward takes the fused Functions: ``fused``, except inside a compiled training
        step (:mod:`bayescomp.compiled_step`), where the compiler derives and fuses the plain ops' backward itself
        and a hand-written Function would only hide them from it."""
        return self.fused and not torch.compiler.is_compiling()

    def _variance_cache(self) -> VarianceCache:
        cache = self.__dict__.get("_variances")
        if cache is None:
            cache = self.__dict__["_variances"] = VarianceCache()
        return cache

    def _variance(self, name: str, fresh: bool = False) -> torch.Tensor:
        """exp(getattr(self, name)), detached; ``fresh`` recomputes it (the training forward does), otherwise the
        value of the same parameter version is reused (the KL after the forward: one exp pass per step, not two)."""
        return self._variance_cache().get(name, getattr(self, name), fresh)

    def _variance_store(self, name: str, value: torch.Tensor) -> None:
        """Remember exp(getattr(self, name)) computed by a forward (conv layers keep it in their autograd graph)."""
        self._variance_cache().put(name, getattr(self, name), value)

    def kl_divergence(self) -> torch.Tensor:
        """KL(q || p) summed over the layer's parameters (a scalar)."""
        raise NotImplementedError

    def group_log_alpha(self) -> torch.Tensor:
        """Pruning statistic per group: small means keep, large means the group carries only noise."""
        raise NotImplementedError

    def posterior_mean_weight(self) -> torch.Tensor:
        """Weight of the deterministic (posterior-mean) layer, shaped like ``nn.Linear``/``nn.Conv2d`` weights."""
        raise NotImplementedError

    def posterior_mean_bias(self) -> torch.Tensor | None:
        """Bias of the deterministic layer (``None`` when the layer has no bias)."""
        raise NotImplementedError

    def posterior_weight_variance(self) -> torch.Tensor:
        """Marginal posterior variance of every weight (same shape as the weight), for bit precision."""
        raise NotImplementedError

    def weight_keep_mask(self) -> torch.Tensor | None:
        """Per-weight keep mask (bool, shaped like the weight) for priors that prune single weights (Sparse VD).

        Group priors return ``None``: they prune whole groups only. Where a mask exists, the posterior-mean
        weight already holds zeros at the pruned positions, and compression stores the layer sparsely.
        """
        return None

    def apply_constraints(self) -> None:
        """Called after each optimiser step (e.g. variance clipping, closed-form hyper-parameter steps)."""

    def on_epoch_end(self) -> None:
        """Called by the trainer after each training epoch, before validation and the checkpoint. Default: nothing."""

    def to_plain(self) -> nn.Module:
        """The deterministic layer as a plain ``nn.Linear``/``nn.Conv2d`` with the posterior-mean weights."""
        raise NotImplementedError

    def _load_means(self, layer: nn.Module) -> BayesianLayer:
        """Copy a plain layer's weight and bias into the posterior means; move to the layer's device."""
        with torch.no_grad():
            self.weight_mu.copy_(layer.weight)
            if layer.bias is not None:
                self.bias_mu.copy_(layer.bias)
        return self.to(layer.weight.device)

    @property
    def num_groups(self) -> int:
        return int(self.group_log_alpha().numel())


class BayesianLinear(BayesianLayer):
    """What every prior's Linear layer shares: shape, construction from ``nn.Linear``, export to ``nn.Linear``.

    Subclasses take ``(in_features, out_features, bias, config)`` and define ``weight_mu`` / ``bias_mu``.

    Inputs may have any rank ``(..., in_features)``, as for ``nn.Linear``; the token dimensions (e.g. T of a
    ``[B, T, D]`` input) are flattened into rows for the two products of local reparameterisation, so the output
    noise is drawn per element. A group scale z (one per input feature, BC-GNJ / BC-GHS) is drawn once per example
    (the first dimension) and *shared by all its tokens*: z has shape (B, 1, D) for ``[B, T, D]``. Our choice — the
    paper (Louizos et al. 2017) has 2-D inputs only: the group is the input feature, and one draw per example
    mirrors its one draw per row of a 2-D batch, so a token sequence is treated as one example whose features
    are switched on or off together (as the deployed, pruned layer does). A 1-D input is one example.
    """

    group_dim = "in"

    @classmethod
    def from_linear(cls, layer: nn.Linear, config: Any) -> BayesianLinear:
        """The Bayesian layer whose posterior means start at ``layer``'s weights."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, config)
        return new._load_means(layer)

    def to_plain(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias_mu is not None)
        return _copy_posterior_means(self, layer)


class BayesianConv2d(BayesianLayer):
    """What every prior's Conv2d layer shares: geometry, construction from ``nn.Conv2d``, the convolution with
    arbitrary weights, export to ``nn.Conv2d``. Only zero padding is supported (numeric ``padding``)."""

    group_dim = "out"

    def _set_geometry(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                      bias: bool) -> nn.Conv2d:
        """Store the conv geometry and return a freshly initialised ``nn.Conv2d`` of that shape (for its weights)."""
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = template.kernel_size, template.stride
        self.padding, self.dilation, self.groups = template.padding, template.dilation, template.groups
        return template

    @classmethod
    def from_conv2d(cls, layer: nn.Conv2d, config: Any) -> BayesianConv2d:
        """The Bayesian layer whose posterior means start at ``layer``'s weights."""
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"{layer}: only numeric zero padding is supported")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, layer.bias is not None, config)
        return new._load_means(layer)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def to_plain(self) -> nn.Conv2d:
        layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, self.groups, bias=self.bias_mu is not None)
        return _copy_posterior_means(self, layer)


class PerWeightGaussian(BayesianLayer):
    """Shared by the per-weight priors (Sparse VD, Turbo-VBI): q(w) = N(weight_mu, exp(weight_log_sigma2)) for every
    weight, sampled by local reparameterisation (the pre-activation's Gaussian marginal: two products, means and
    variances). With ``config.train_clip`` the weights outside :meth:`weight_keep_mask` are zeroed (mean and
    variance) in the training forward as well, so training sees the network that will be deployed. Works for both
    shells: ``group_dim == "in"`` is a Linear layer, ``"out"`` a Conv2d."""

    def posterior_mean_weight(self) -> torch.Tensor:
        return self.weight_mu * self.weight_keep_mask()

    def posterior_mean_bias(self) -> torch.Tensor | None:
        return self.bias_mu

    def posterior_weight_variance(self) -> torch.Tensor:
        return self.weight_log_sigma2.exp()

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward of :meth:`forward` through the fused Functions (same random draws, same output)."""
        sigma2 = self._variance("weight_log_sigma2", fresh=True)
        if self.group_dim == "in":
            mean = self.weight_mu
            if self.config.train_clip:
                keep = self._train_keep_mask()
                mean, sigma2 = mean * keep, sigma2 * keep
            rows = x.reshape(-1, x.shape[-1])  # tokens (..., in) -> rows; per-weight noise needs no grouping
            noise = standard_normal(rows.shape[0], self.out_features, device=x.device, dtype=x.dtype)
            out = linear_lrt(rows, None, mean, self.weight_log_sigma2, sigma2, self.bias_mu, None, None, noise)
            return out.reshape(*x.shape[:-1], self.out_features)
        mean, variance = self.weight_mu, self.weight_log_sigma2.exp()
        self._variance_store("weight_log_sigma2", variance)
        if self.config.train_clip:
            keep = self._train_keep_mask()
            mean, variance = mean * keep, variance * keep
        mean_out, var_out = in_layout(memory_format_of(self.weight_mu), self._product(x, mean, self.bias_mu),
                                      self._product(x * x, variance, None))
        return sample_lrt(mean_out, var_out, standard_normal_like(mean_out))

    def _train_keep_mask(self) -> torch.Tensor:
        """The keep mask of the training forward (priors may compute it from values the KL then reuses)."""
        return self.weight_keep_mask()

    def _train_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, variance = self.weight_mu, self.weight_log_sigma2.exp()
        if self.config.train_clip:
            keep = self._train_keep_mask()
            mean, variance = mean * keep, variance * keep
        return mean, variance

    def _product(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias) if self.group_dim == "in" else self._conv(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deterministic:
            return self._product(x, self.posterior_mean_weight(), self.bias_mu)
        if self._fused_training():
            return self._fused_forward(x)
        mean, variance = self._train_weights()
        noise_var = self._product(x * x, variance, None).add_(1e-8).sqrt_()
        return torch.addcmul(self._product(x, mean, self.bias_mu), noise_var, standard_normal_like(noise_var))


def _copy_posterior_means(source: BayesianLayer, layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(source.posterior_mean_weight())
        if layer.bias is not None:
            layer.bias.copy_(source.posterior_mean_bias())
    return layer.to(source.weight_mu.device)


@dataclass(frozen=True)
class PriorSpec:
    """A registered prior: its config dataclass and the factories that turn plain layers into Bayesian ones."""

    name: str
    config_cls: type
    from_linear: Callable[[nn.Linear, Any], BayesianLayer]
    from_conv2d: Callable[[nn.Conv2d, Any], BayesianLayer]
    description: str


PRIORS: dict[str, PriorSpec] = {}


def register_prior(spec: PriorSpec) -> PriorSpec:
    PRIORS[spec.name] = spec
    return spec


def get_prior(name: str) -> PriorSpec:
    if name not in PRIORS:
        raise ValueError(f"unknown method/prior {name!r}; known: {', '.join(sorted(PRIORS))}")
    return PRIORS[name]


def bayesian_layers(model: nn.Module) -> Iterator[tuple[str, BayesianLayer]]:
    """All Bayesian layers of a model with their qualified names, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, BayesianLayer):
            yield name, module


def set_deterministic(model: nn.Module, value: bool = True) -> None:
    for _, layer in bayesian_layers(model):
        layer.deterministic = value


class deterministic_mode:  # noqa: N801 (used as a context manager)
    """Context manager: posterior-mean forward and ``eval()`` inside, previous state restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.training = self.model.training
        self.previous = {name: layer.deterministic for name, layer in bayesian_layers(self.model)}
        self.model.eval()
        set_deterministic(self.model, True)
        return self.model

    def __exit__(self, *exc: object) -> None:
        for name, layer in bayesian_layers(self.model):
            layer.deterministic = self.previous.get(name, False)
        self.model.train(self.training)
