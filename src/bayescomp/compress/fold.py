"""Remove neurons and filters left empty: units whose every incoming weight is pruned, and units no later weight reads.

Per-weight priors (Sparse VD, Turbo-VBI) can empty a unit's whole row of incoming weights while the next layer still
reads it. Such a unit no longer depends on the input: it outputs the constant act(bias) (a constant feature map for a
filter, which pooling keeps constant). Its contribution to the next layer is then the same for every input, so it is
folded into the next layer's bias and the unit is removed, exactly (up to float round-off). Folding is done only
where that is exact: between the two layers only elementwise activations, dropout, max pooling (any padding),
average pooling without padding, and a flatten may sit (batch norm of a running model would also be constant, but
is left alone), and a next convolution must not pad (a padded border would not see the constant).

The mirror case needs no such care: a unit whose every *outgoing* weight is zero (a filter whose input column of the
next convolution is empty) contributes nothing whatever sits between the layers, so :func:`drop_unread_units`
removes it exactly. Group priors never leave one (their groups are whole rows or columns); per-weight priors can.
"""

from __future__ import annotations

import torch
from torch import nn

from bayescomp.compress.chain import Chain
from bayescomp.compress.masks import PruningPlan, _interface_width, close_plan

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Identity, nn.Dropout)


def _constant_through(modules: list[nn.Module], value: torch.Tensor) -> torch.Tensor | None:
    """The constant each empty unit shows the next layer (its bias through the activations), or ``None`` if some
    module between the layers could turn a constant map into a non-constant one (or is not per-channel)."""
    for module in modules:
        if isinstance(module, nn.Dropout):
            continue  # identity at inference
        if isinstance(module, ELEMENTWISE):
            value = module(value)
        elif isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            continue
        elif isinstance(module, nn.AvgPool2d) and module.padding in (0, (0, 0)):
            continue
        else:
            return None
    return value


def _parameters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    from bayescomp.compress.shrink import dense_parameters

    return dense_parameters(module)


def fold_empty_units(chain: Chain, plan: PruningPlan) -> tuple[PruningPlan, int]:
    """The plan with every foldable empty unit removed and its constant moved into the next layer's bias
    (``plan.bias_shift``); also the number of units folded. The network's outputs are never touched."""
    in_keep, out_keep = list(plan.in_keep), list(plan.out_keep)
    shifts: list[torch.Tensor | None] = list(plan.bias_shift or [None] * len(chain.layers))
    folded = 0
    with torch.no_grad():
        for i in range(len(chain.layers) - 1):
            layer, nxt = chain.layers[i], chain.layers[i + 1]
            weight, bias = _parameters(layer.module)
            weight = weight.cpu()
            kernel = weight[0, 0].numel() if weight.dim() == 4 else 1
            used = weight.flatten(1)[:, in_keep[i].repeat_interleave(kernel)]
            empty = out_keep[i] & (used == 0).all(dim=1)
            if not bool(empty.any()) or int(empty.sum()) == int(out_keep[i].sum()):
                continue
            pre = torch.zeros(int(empty.sum())) if bias is None else bias.cpu()[empty].float()
            value = _constant_through([m for _, m in layer.after], pre)
            if value is None:
                continue
            next_weight, _ = _parameters(nxt.module)
            next_weight = next_weight.cpu()
            if nxt.kind == "conv":
                if any(p != 0 for p in nxt.module.padding) or nxt.module.groups != 1:
                    continue
                shift = next_weight[:, empty].sum(dim=(2, 3)) @ value
            else:
                width = _interface_width(layer, nxt)
                features = in_keep[i + 1].view(-1, width)[empty].float()  # only the features still read count
                columns = next_weight.view(next_weight.shape[0], -1, width)[:, empty]
                shift = (columns * features).sum(dim=2) @ value
            shifts[i + 1] = shift if shifts[i + 1] is None else shifts[i + 1] + shift
            out_keep[i] = out_keep[i] & ~empty
            width = _interface_width(layer, nxt)
            in_keep[i + 1] = in_keep[i + 1] & out_keep[i].repeat_interleave(width)
            folded += int(empty.sum())
    return PruningPlan(in_keep, out_keep, shifts if any(s is not None for s in shifts) else None), folded


def drop_unread_units(chain: Chain, plan: PruningPlan) -> tuple[PruningPlan, int]:
    """``plan`` without the units whose outgoing posterior-mean weights (the next layer's input columns, over the
    whole kernel or every flattened feature) are all zero; also the number of units dropped. Exact: a zero weight
    reads nothing. The first layer's inputs (the network's input) are left to the chain's own input selection."""
    in_keep = [k.clone() for k in plan.in_keep]
    with torch.no_grad():
        for i in range(len(chain.layers) - 1):
            nxt = chain.layers[i + 1]
            weight, _ = _parameters(nxt.module)
            width = _interface_width(chain.layers[i], nxt)
            kernel = weight[0, 0].numel() if weight.dim() == 4 else 1
            rows = weight.cpu().flatten(1)[plan.out_keep[i + 1]]  # only the next layer's kept outputs read
            read = (rows != 0).view(rows.shape[0], -1, kernel).any(dim=2).any(dim=0)
            in_keep[i + 1] = in_keep[i + 1] & read.view(-1, width).any(dim=1).repeat_interleave(width)
    closed = close_plan(chain, in_keep, list(plan.out_keep))
    closed.bias_shift = plan.bias_shift
    dropped = sum(int(a.sum()) - int(b.sum()) for a, b in zip(plan.out_keep, closed.out_keep))
    return closed, dropped
