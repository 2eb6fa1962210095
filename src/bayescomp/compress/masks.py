"""Group masks from the posterior, propagated across layers into a consistent pruning plan.

Louizos et al. (2017) prune group i when its log dropout rate log alpha_i exceeds a per-layer threshold. A group
is an input neuron of a Linear layer or an output filter of a Conv2d layer, so one layer's decision also removes
units of its neighbours: an output unit that no later weight reads is dead, and an input whose producing filter
is gone carries nothing. :func:`propagate` closes the masks under these rules (linear->linear, conv->conv and
conv->flatten->linear, where each channel owns H*W consecutive features), giving for every layer the inputs and
outputs that survive. The masked model (:func:`masked`) and the physically smaller model built from the same
plan compute the same function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bayescomp.compress.chain import Chain, ChainLayer
from bayescomp.priors.base import BayesianLayer


class PruneError(ValueError):
    """Thresholds would remove every unit of some layer, so no network would be left."""


@dataclass
class PruningPlan:
    """Surviving inputs and outputs of every prunable layer (bool vectors, in chain order)."""

    in_keep: list[torch.Tensor]
    out_keep: list[torch.Tensor]
    #: per layer, a constant added to its bias (dense output coordinates) where empty units of the previous
    #: layer were folded away (:mod:`bayescomp.compress.fold`); ``None`` when nothing was folded
    bias_shift: list[torch.Tensor | None] | None = None

    @classmethod
    def keep_all(cls, chain: Chain) -> PruningPlan:
        """The plan of the unpruned network."""
        return cls([torch.ones(layer.in_size, dtype=torch.bool) for layer in chain.layers],
                   [torch.ones(layer.out_size, dtype=torch.bool) for layer in chain.layers])

    def weights_kept(self, chain: Chain) -> int:
        total = 0
        for layer, keep_in, keep_out in zip(chain.layers, self.in_keep, self.out_keep):
            kernel = 1 if layer.kind == "linear" else int(torch.tensor(layer.module.kernel_size).prod())
            total += int(keep_in.sum()) * int(keep_out.sum()) * kernel
        return total

    def kept_architecture(self, chain: Chain) -> list[int]:
        """Kept group counts as the papers write them: conv output filters, then Linear input features."""
        return [int((self.out_keep if layer.kind == "conv" else self.in_keep)[i].sum())
                for i, layer in enumerate(chain.layers)]


def full_architecture(chain: Chain) -> list[int]:
    return [layer.out_size if layer.kind == "conv" else layer.in_size for layer in chain.layers]


def group_statistics(chain: Chain) -> list[torch.Tensor]:
    """Per-layer pruning statistic (log alpha for the BC priors); plain layers raise a TypeError."""
    stats = []
    for layer in chain.layers:
        if not isinstance(layer.module, BayesianLayer):
            raise TypeError(f"layer {layer.name!r} is not Bayesian; bayesify and train the model first")
        stats.append(layer.module.group_log_alpha().detach().cpu())
    return stats


def group_keep_from_thresholds(stats: Sequence[torch.Tensor], thresholds: Sequence[float]) -> list[torch.Tensor]:
    """Keep group i of layer l when ``stats[l][i] < thresholds[l]``."""
    if len(thresholds) != len(stats):
        raise ValueError(f"expected {len(stats)} thresholds (one per layer), got {len(thresholds)}")
    return [s < float(t) for s, t in zip(stats, thresholds)]


def _interface_width(layer: ChainLayer, nxt: ChainLayer) -> int:
    """Features of ``nxt``'s input per output unit of ``layer`` (H*W after a conv->flatten, else 1)."""
    if layer.kind == "conv" and nxt.kind == "linear":
        if nxt.in_size % layer.out_size:
            raise PruneError(f"{nxt.name!r} has {nxt.in_size} inputs, not a multiple of {layer.out_size} channels")
        return nxt.in_size // layer.out_size
    if nxt.in_size != layer.out_size:
        raise PruneError(f"{layer.name!r} has {layer.out_size} outputs but {nxt.name!r} expects {nxt.in_size}")
    return 1


def propagate(chain: Chain, group_keep: Sequence[torch.Tensor]) -> PruningPlan:
    """Turn per-layer group keep-masks into a consistent plan; raise :class:`PruneError` if a layer empties."""
    full = PruningPlan.keep_all(chain)
    in_keep, out_keep = full.in_keep, full.out_keep
    for i, (layer, keep) in enumerate(zip(chain.layers, group_keep)):
        target = in_keep if layer.kind == "linear" else out_keep
        if keep.shape != target[i].shape:
            raise ValueError(f"mask for {layer.name!r} has shape {tuple(keep.shape)}, expected {tuple(target[i].shape)}")
        target[i] = target[i] & keep.bool().cpu()
    out_keep[-1] = torch.ones_like(out_keep[-1])  # the network's outputs (classes) always stay
    return close_plan(chain, in_keep, out_keep)


def close_plan(chain: Chain, in_keep: list[torch.Tensor], out_keep: list[torch.Tensor],
               message: str | None = None) -> PruningPlan:
    """Close input and output keep-masks of every layer under the neighbour rules (an output no later weight reads
    is dead; an input whose producer is gone carries nothing) and check no layer empties.

    :func:`propagate` starts from one group mask per layer; methods with scales on both sides of a layer (the
    conditional hypernetwork's input-output factorisation) start from both masks. Raises :class:`PruneError`
    with ``message`` (or the threshold advice) when a layer loses all its inputs or outputs.
    """
    in_keep, out_keep = [k.bool().cpu().clone() for k in in_keep], [k.bool().cpu().clone() for k in out_keep]
    for _ in range(len(chain.layers) + 1):  # a fixed point is reached after at most one pass per layer
        changed = False
        for i in range(len(chain.layers) - 1):
            width = _interface_width(chain.layers[i], chain.layers[i + 1])
            used = in_keep[i + 1].view(-1, width)
            new_out = out_keep[i] & used.any(dim=1)
            new_in = (used & new_out[:, None]).reshape(-1)
            changed |= not (torch.equal(new_out, out_keep[i]) and torch.equal(new_in, in_keep[i + 1]))
            out_keep[i], in_keep[i + 1] = new_out, new_in
        if not changed:
            break
    for layer, keep_in, keep_out in zip(chain.layers, in_keep, out_keep):
        if not keep_in.any() or not keep_out.any():
            raise PruneError(
                f"the thresholds prune every {'input' if not keep_in.any() else 'output'} unit of layer "
                f"{layer.name!r}, which would disconnect the network; " + (message or
                "raise that layer's threshold (keep groups with log alpha below it) or use the automatic threshold "
                "search.") + " The model is unchanged."
            )
    return PruningPlan(in_keep, out_keep)


@contextlib.contextmanager
def masked(chain: Chain, plan: PruningPlan) -> Iterator[None]:
    """Inside the block, every prunable layer sees zeros on the inputs the plan removes.

    This is the masked (not yet shrunk) model: removed units contribute nothing downstream, exactly as if
    they were cut out, whatever sits in between (batch norm, pooling, activations); folded units' constants are
    added to the next layer's output (``plan.bias_shift``).
    """
    handles = []
    for layer, keep in zip(chain.layers, plan.in_keep):
        shape = (1, -1) if layer.kind == "linear" else (1, -1, 1, 1)
        factor = keep.to(torch.float32).view(shape)

        def hook(module: nn.Module, args: tuple, factor: torch.Tensor = factor) -> tuple:
            return (args[0] * factor.to(args[0].device, args[0].dtype),) + tuple(args[1:])

        handles.append(layer.module.register_forward_pre_hook(hook))
    for layer, shift in zip(chain.layers, plan.bias_shift or []):
        if shift is not None:
            view = (1, -1) if layer.kind == "linear" else (1, -1, 1, 1)

            def add(module: nn.Module, args: tuple, output: torch.Tensor, shift=shift.view(view)) -> torch.Tensor:
                return output + shift.to(output.device, output.dtype)

            handles.append(layer.module.register_forward_hook(add))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
