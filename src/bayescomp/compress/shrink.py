"""Build the physically smaller plain model from a pruning plan.

Every kept Linear/Conv2d becomes a smaller ``nn.Linear``/``nn.Conv2d`` holding the posterior-mean weights of the
surviving rows and columns; batch norms lose the channels of removed filters; a ``Flatten`` whose next layer
reads only some of the features becomes an :class:`~bayescomp.modules.InputSelect`, and so does the input
flatten of a first Linear layer whose input pixels were pruned. The result has no masks and no Bayesian layers:
a plain ``nn.Sequential`` that takes the same inputs and returns the same logits as the masked model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bayescomp.compress.chain import Chain, ChainLayer
from bayescomp.compress.masks import PruningPlan, _interface_width
from bayescomp.modules import InputSelect
from bayescomp.priors.base import BayesianLayer


def dense_parameters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the deterministic layer (posterior mean for Bayesian layers)."""
    if isinstance(module, BayesianLayer):
        return module.posterior_mean_weight().detach(), _detach(module.posterior_mean_bias())
    return module.weight.detach(), _detach(module.bias)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _small_layer(layer: ChainLayer, keep_in: torch.Tensor, keep_out: torch.Tensor,
                 shift: torch.Tensor | None = None) -> nn.Module:
    weight, bias = dense_parameters(layer.module)
    weight = weight[keep_out][:, keep_in].clone()
    if shift is not None:  # constants of folded empty units of the previous layer (compress/fold.py)
        shift = shift.to(weight.device, weight.dtype)
        bias = shift if bias is None else bias + shift
    m = layer.module
    if layer.kind == "linear":
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = nn.Conv2d(weight.shape[1], weight.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,
                        bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias[keep_out])
    return new


def _small_batchnorm(bn: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(bn)(int(keep.sum()), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _select(keep_features: torch.Tensor) -> InputSelect:
    return InputSelect(torch.nonzero(keep_features).flatten(), int(keep_features.numel()))


def shrink(chain: Chain, plan: PruningPlan) -> nn.Sequential:
    """The physically smaller plain model for ``plan`` (inputs in [0, 1], logits out), in eval mode."""
    modules: list[nn.Module] = []
    first = chain.layers[0]
    head = [copy.deepcopy(m) for _, m in chain.head]
    if first.kind == "linear" and not bool(plan.in_keep[0].all()):
        flat_positions = [i for i, m in enumerate(head) if isinstance(m, (nn.Flatten, InputSelect))]
        select = _select(plan.in_keep[0])
        if flat_positions and isinstance(head[flat_positions[-1]], InputSelect):
            previous = head[flat_positions[-1]].indices
            select = InputSelect(previous[plan.in_keep[0]], head[flat_positions[-1]].in_features)
        if flat_positions:
            head[flat_positions[-1]] = select
        else:
            head.append(select)
    modules += head
    for i, layer in enumerate(chain.layers):
        keep_in, keep_out = plan.in_keep[i], plan.out_keep[i]
        modules.append(_small_layer(layer, keep_in, keep_out, plan.bias_shift[i] if plan.bias_shift else None))
        nxt = chain.layers[i + 1] if i + 1 < len(chain.layers) else None
        for _, module in layer.after:
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                modules.append(_small_batchnorm(module, keep_out))
            elif isinstance(module, nn.Flatten) and nxt is not None:
                width = _interface_width(layer, nxt)
                features = plan.in_keep[i + 1].view(-1, width)[keep_out].reshape(-1)
                modules.append(copy.deepcopy(module) if bool(features.all()) else _select(features))
            else:
                modules.append(copy.deepcopy(module))
    return nn.Sequential(*modules).eval()


def kept_weight_variances(chain: Chain, plan: PruningPlan) -> list[torch.Tensor | None]:
    """Posterior variances of the kept weights of every layer (``None`` for plain layers)."""
    out: list[torch.Tensor | None] = []
    for layer, keep_in, keep_out in zip(chain.layers, plan.in_keep, plan.out_keep):
        if isinstance(layer.module, BayesianLayer):
            out.append(layer.module.posterior_weight_variance().detach()[keep_out][:, keep_in].clone())
        else:
            out.append(None)
    return out
