"""Kernel-level pruning for self-compression (Carannante, Dera, Rasool, Bouaynaya, MLSP 2020).

A *kernel* is an output channel of a convolution or an output unit of a linear layer; in the eVI posterior
each has its own isotropic Gaussian ``N(M_k, s_k I)``. The paper ranks kernels by the Frobenius norm of their
mean ``||M_k||_F`` (the KL to ``N(0, I)`` shrinks unneeded kernels towards zero) and deletes those near zero,
together with the matching inputs of the next weight layer. The same ranking is applied to the vanilla
(deterministic) CNN baseline, so every function here works on a plain ``nn.Sequential`` as well as on a
:class:`~bayescomp.selfcompress.layers.DensitySequential`.

Deleting kernel ``k`` also deletes its bias, so its constant contribution ``act(b_k)`` to the next layer
disappears (the paper deletes kernels outright; no bias folding). In a density model the next layer's
isotropic weight variance ``s_j`` multiplies the *whole* input energy ``tr S + mu^T mu``, so a removed
channel also stops adding to the next layer's output variance (zeroing the next layer's columns alone would
not do that), and the next layer's KL loses the removed columns' terms.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bayescomp.selfcompress.layers import (
    DensityActivation,
    DensityConv2d,
    DensityFlatten,
    DensityLinear,
    DensityMaxPool2d,
)

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, DensityConv2d, DensityLinear)
CONV_LAYERS = (nn.Conv2d, DensityConv2d)
PASS_THROUGH = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.Flatten, nn.Identity, DensityActivation,
                DensityMaxPool2d, DensityFlatten)
"""Layers that act per channel/feature, so removing a channel before them removes it after them too."""


def _weight_layer(model: nn.Sequential, layer_index: int) -> nn.Module:
    """The weight layer at ``layer_index`` (negative indices allowed), or a clear error."""
    if not -len(model) <= layer_index < len(model):
        raise IndexError(f"layer_index {layer_index} is out of range for a model with {len(model)} layers")
    layer = model[layer_index]
    if not isinstance(layer, WEIGHT_LAYERS):
        raise TypeError(f"layer {layer_index} ({type(layer).__name__}) is not a Conv2d/Linear weight layer")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise TypeError(f"layer {layer_index}: grouped convolutions (groups={layer.groups}) are unsupported")
    return layer


def _mean_weight(layer: nn.Module) -> Tensor:
    """The posterior mean ``weight_mu`` of a Bayesian layer, else the plain ``weight``."""
    return layer.weight_mu if hasattr(layer, "weight_mu") else layer.weight


@torch.no_grad()
def kernel_norms(model: nn.Sequential, layer_index: int) -> Tensor:
    """``||M_k||_F`` per output kernel/unit of layer ``layer_index``: the paper's pruning criterion."""
    weight = _mean_weight(_weight_layer(model, layer_index))
    return torch.linalg.vector_norm(weight.detach().flatten(1), dim=1)


@torch.no_grad()
def kernel_snr(model: nn.Sequential, layer_index: int) -> Tensor:
    """``||M_k|| / sqrt(d s_k)`` per kernel (``d`` weights per kernel, ``s_k`` its variance).

    An option for Bayesian layers only, in the spirit of the Graves/Blundell signal-to-noise rule; the paper
    itself ranks by :func:`kernel_norms`. It compares a kernel's mean energy to its expected noise energy.
    """
    layer = _weight_layer(model, layer_index)
    if not hasattr(layer, "sigma2"):
        raise ValueError(f"layer {layer_index} ({type(layer).__name__}) has no weight variance; "
                         f"kernel_snr needs a Bayesian (Density) layer; use kernel_norms for plain layers")
    mu = layer.weight_mu.detach()
    d = mu[0].numel()
    return torch.linalg.vector_norm(mu.flatten(1), dim=1) / torch.sqrt(d * layer.sigma2.detach())


def _next_weight_layer(model: nn.Sequential, layer_index: int) -> int:
    """Index of the next weight layer after ``layer_index``; only pass-through layers may lie between."""
    for j in range(layer_index + 1, len(model)):
        if isinstance(model[j], WEIGHT_LAYERS):
            between = [f"{i} ({type(model[i]).__name__})" for i in range(layer_index + 1, j)
                       if not isinstance(model[i], PASS_THROUGH)]
            if between:
                raise TypeError(f"cannot prune layer {layer_index}: unsupported layer(s) before the next "
                                f"weight layer {j}: {', '.join(between)}; only activations, max-pool and "
                                f"flatten are handled")
            return j
    raise ValueError(f"layer {layer_index} is the last weight layer; its outputs (the classes) cannot be "
                     f"removed")


def _slice_param(layer: nn.Module, name: str, index: Tensor, dim: int) -> None:
    """Replace parameter ``name`` by its slice along ``dim`` (a fresh Parameter, so grads start clean)."""
    param = getattr(layer, name, None)
    if param is None:
        return
    setattr(layer, name, nn.Parameter(param.detach().index_select(dim, index).clone(),
                                      requires_grad=param.requires_grad))


def _shrink_outputs(layer: nn.Module, index: Tensor) -> None:
    """Keep only the output kernels/units ``index`` (mean or weight, rho, bias) and fix the size attribute."""
    for name in ("weight", "weight_mu"):
        _slice_param(layer, name, index, 0)
    _slice_param(layer, "weight_rho", index, 0)
    _slice_param(layer, "bias", index, 0)
    if isinstance(layer, CONV_LAYERS):
        layer.out_channels = int(index.numel())
    else:
        layer.out_features = int(index.numel())


def _shrink_inputs(layer: nn.Module, keep: Tensor, next_index: int) -> None:
    """Drop the inputs of ``layer`` fed by removed kernels: input channels of a conv, or the ``H*W``
    consecutive columns per channel (``(c, h, w)`` flatten order) of a linear layer (``H*W = 1`` after a
    linear layer)."""
    c_old = int(keep.numel())
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise TypeError(f"layer {next_index}: grouped convolutions (groups={layer.groups}) are unsupported")
    if isinstance(layer, CONV_LAYERS):
        if layer.in_channels != c_old:
            raise ValueError(f"layer {next_index} expects {layer.in_channels} input channels, but the pruned "
                             f"layer has {c_old} outputs")
        index = keep.nonzero().flatten()
        for name in ("weight", "weight_mu"):
            _slice_param(layer, name, index, 1)
        layer.in_channels = int(index.numel())
        return
    if layer.in_features % c_old != 0:
        raise ValueError(f"layer {next_index} has {layer.in_features} inputs, not a multiple of the {c_old} "
                         f"outputs of the pruned layer")
    hw = layer.in_features // c_old
    index = keep.repeat_interleave(hw).nonzero().flatten()
    for name in ("weight", "weight_mu"):
        _slice_param(layer, name, index, 1)
    layer.in_features = int(index.numel())


def remove_kernels(model: nn.Sequential, layer_index: int, keep: Tensor) -> nn.Sequential:
    """A new, physically smaller copy of ``model`` keeping only the kernels of layer ``layer_index`` where
    ``keep`` (bool, one entry per kernel/unit) is True, and the matching inputs of the next weight layer.

    This is the deletion step of Carannante et al. 2020's self-compression; ``model`` itself is unchanged
    (also when an error is raised). Optimizer state for the old parameters does not carry over.
    """
    layer = _weight_layer(model, layer_index)
    layer_index = layer_index % len(model)
    n_out = _mean_weight(layer).shape[0]
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool or tuple(keep.shape) != (n_out,):
        raise ValueError(f"keep must be a bool tensor of shape ({n_out},) for layer {layer_index}, got "
                         f"dtype {keep.dtype} and shape {tuple(keep.shape)}")
    next_index = _next_weight_layer(model, layer_index)
    if not bool(keep.any()):
        raise ValueError(f"keep is all False: this would remove every kernel of layer {layer_index}")
    keep = keep.to(_mean_weight(layer).device)
    new = copy.deepcopy(model)
    _shrink_inputs(new[next_index], keep, next_index)
    _shrink_outputs(new[layer_index], keep.nonzero().flatten())
    return new
