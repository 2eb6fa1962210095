"""Compression of networks that are not a chain: residual additions, concatenations, batch norm, depthwise convs.

When two layers write into the same tensor (the branches of a residual addition) or one layer's channels are read
by several layers, a channel can only leave all of them at once. We find these coupled channel sets with
Torch-Pruning's dependency graph (Fang et al., "DepGraph", CVPR 2023), which traces the model once through autograd
and knows how every operator maps channels: batch norm, additions, ``torch.cat``/``split``, flatten, depthwise
convolutions. We chose it over our own ``torch.fx`` pass because fx cannot trace data-dependent Python in a user's
``forward`` while an autograd trace can, and because it already ships the index bookkeeping for concatenations and
depthwise convolutions that a hand-written pass would have to repeat; it does the physical surgery too, so the
small model is built by the same code that found the coupling.

The posterior decides, per coupled group, which channels go. Each Bayesian layer of the group that carries a group
statistic for those channels (a Conv2d's output filters, a Linear layer's input features) contributes its log alpha;
``reduce="min"`` (default) keeps a channel unless *every* such layer's posterior says it is noise, which is when
the channel is really zero in the posterior-mean network; ``"mean"`` averages the layers' statistics instead (more
pruning; an option, since no paper fixes how BC's per-layer groups combine across an addition). Groups that touch a
grouped (not depthwise) convolution are kept whole: removing channels there must keep the groups equal in size,
which this path does not do. The outputs of the last layer (the classes) are never pruned.

Transformer blocks: LayerNorm, Embedding and MultiheadAttention (:data:`bayescomp.bayesify.KEPT_PLAIN`) are
traced like any layer, and every group that touches one of them (or a layer inside one, e.g. the attention's
``out_proj``) is kept whole. So the residual stream (embedding width, norms, attention, the MLP's output) stays,
and what can go are channels private to Linear/Conv2d layers, such as the hidden units of a block's MLP.

Every candidate is evaluated as the physically pruned network, so the searched and the shipped model are the same.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from bayescomp.bayesify import KEPT_PLAIN
from bayescomp.compress.chain import UnsupportedModelError
from bayescomp.compress.masks import PruneError, PruningPlan
from bayescomp.priors.base import BayesianLayer, bayesian_layers
from bayescomp.tracing import output_layers

REDUCTIONS = ("min", "mean")
SUPPORTED_WEIGHTED = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, BayesianLayer) + KEPT_PLAIN


@dataclass
class Member:
    """One side of a Linear/Conv2d layer that a coupled group touches: ``idxs[k]`` of that side (output units or
    input channels/features) is the group's channel ``root_idxs[k]``."""

    layer: str
    side: str  # "out" or "in"
    idxs: torch.Tensor
    root_idxs: torch.Tensor


CHANNEL_SCORES = ("log_alpha", "snr")  # how the posterior ranks a group's channels (CompressConfig.channel_score)


@dataclass
class CoupledGroup:
    """Channels that must be pruned together, indexed like the output (or input) of ``root``."""

    root: str  # qualified name of the layer the group's channel indices refer to
    handler: Callable
    size: int
    members: list[Member]
    stat: torch.Tensor | None  # per channel; None when nothing in the group may be pruned

    def describe(self, limit: int = 4) -> str:
        names = [f"{m.layer}.{m.side}" for m in self.members]
        return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")

    @property
    def prunable(self) -> bool:
        return self.stat is not None


def snr_statistic(group: CoupledGroup, layers: dict[str, BayesianLayer]) -> torch.Tensor:
    """Per channel of ``group``: minus the log of the posterior signal-to-noise ratio E[w]² / Var[w] summed over
    every weight of its Bayesian members that goes with the channel (a producer's filters, a consumer's input
    slices); large means redundant, as log alpha does (``CompressConfig.channel_score="snr"``).

    Why: with a Gaussian posterior the precision 1 / Var[w] stands for the loss's curvature, so E[w]² / Var[w] is
    the second-order saliency of zeroing w (Optimal Brain Damage, LeCun et al. 1990); as a ratio it does not move
    when batch norm rescales a filter, where a weight norm does, and a group prior's Var[w] includes the group
    scale's noise. Our choice, not the paper's (Louizos et al. 2017 rank by the group's log alpha)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    sides: dict[str, dict[str, list[Member]]] = {}
    for member in group.members:
        if member.layer in layers:
            sides.setdefault(member.layer, {"out": [], "in": []})[member.side].append(member)
    for name, members in sides.items():
        layer = layers[name]
        ratio = (layer.posterior_mean_weight().square() / layer.posterior_weight_variance()).detach().cpu().double()
        pairs = ratio.flatten(2).sum(2) if ratio.dim() > 2 else ratio  # (output, input) pairs
        if getattr(layer, "groups", 1) > 1:  # depthwise (other grouped convs stay whole): a filter per channel
            member = (members["out"] or members["in"])[0]
            total.scatter_add_(0, member.root_idxs, pairs.sum(1)[member.idxs])
            continue
        for member in members["out"]:
            total.scatter_add_(0, member.root_idxs, pairs.sum(1)[member.idxs])
        for member in members["in"]:
            total.scatter_add_(0, member.root_idxs, pairs.sum(0)[member.idxs])
        for out in members["out"]:  # a layer reading and writing the same channels: its (c, c) weights once
            for into in members["in"]:
                shared = out.root_idxs[:, None] == into.root_idxs[None, :]
                twice = pairs[out.idxs][:, into.idxs][shared]
                total.scatter_add_(0, out.root_idxs[:, None].expand_as(shared)[shared], -twice)
    return torch.where(total > 0, -torch.log(total), torch.full_like(total, math.inf)).float()


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every Bayesian layer replaced by its posterior-mean ``nn.Linear``/``nn.Conv2d``."""
    plain = copy.deepcopy(model)
    for name, layer in list(bayesian_layers(plain)):
        _set_submodule(plain, name, layer.to_plain())
    return plain.eval()


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED_WEIGHTED) or not list(module.parameters(recurse=False)):
            continue
        raise UnsupportedModelError(
            f"module {name!r} ({type(module).__name__}) has weights the compression path cannot prune; supported "
            "weighted layers: Linear, Conv2d (also grouped/depthwise), BatchNorm1d/2d; LayerNorm, Embedding and "
            "MultiheadAttention are kept whole")


def _check_kept_plain_called(model: nn.Module, example: torch.Tensor) -> None:
    """Refuse a LayerNorm/Embedding/MultiheadAttention that the forward does not call: its weights are then used
    some other way (e.g. ``table.weight[0]``), which the trace cannot map to channels."""
    called: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda m, a: called.add(id(m)))
               for m in model.modules() if isinstance(m, KEPT_PLAIN)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    for name, module in model.named_modules():
        if isinstance(module, KEPT_PLAIN) and id(module) not in called:
            raise UnsupportedModelError(
                f"module {name!r} ({type(module).__name__}) is not called by the forward, so its weights are used in "
                "a way the dependency trace cannot follow; call the module instead of reading its weights.")


class DependencyGraph:
    """The coupled channel groups of a (Bayesian or plain) model, and the pruned plain models built from them."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, reduce: str = "min",
                 channel_score: str = "log_alpha") -> None:
        """``channel_score`` is the per-channel statistic every threshold is compared with (large: redundant):
        the group log alpha reduced over the members by ``reduce``, or ``"snr"`` (:func:`snr_statistic`)."""
        if channel_score not in CHANNEL_SCORES:
            raise ValueError(f"unknown channel_score {channel_score!r}; use {', '.join(CHANNEL_SCORES)}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduce {reduce!r}; use {' or '.join(REDUCTIONS)}")
        _check_supported(model)
        self.model = model
        self.example = example_input[:2].detach().cpu()
        self.plain = plain_copy(model).cpu()
        self.bayes = dict(bayesian_layers(model))
        names = {m: n for n, m in self.plain.named_modules()}
        self._kept_whole = {id(inner) for module in self.plain.modules() if isinstance(module, KEPT_PLAIN)
                            for inner in module.modules()}
        if self._kept_whole:
            _check_kept_plain_called(self.plain, self.example)
        try:
            graph = self._graph(self.plain)
            self.outputs = [names[m] for m in output_layers(self.plain, self.example)]
            raw = list(graph.get_all_groups(ignored_layers=[self.plain.get_submodule(n) for n in self.outputs],
                                            root_module_types=(nn.Conv2d, nn.Linear)))
        except Exception as error:  # noqa: BLE001 - tracing failures are reported with the cause
            raise UnsupportedModelError(f"could not trace {type(model).__name__} to find coupled channels: {error}. "
                                        "The model must run on one example tensor; see bayescomp.compress.graph.")
        self.groups = [self._group(g, names, reduce) for g in raw]
        if channel_score == "snr":  # the same groups (prunable where log alpha is), ranked by the weights' SNR
            for group in self.prunable_groups:
                group.stat = snr_statistic(group, self.bayes).double()

    def _graph(self, plain: nn.Module):
        import torch_pruning as tp

        return tp.DependencyGraph().build_dependency(plain, example_inputs=self.example)

    def _group(self, group, names: dict, reduce: str) -> CoupledGroup:
        root_item = group[0]
        size = len(root_item.idxs)
        members, values, positions, blocked = [], [], [], False
        for item in group:
            module = item.dep.target.module
            blocked = blocked or id(module) in self._kept_whole
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            name = names[module]
            fn = getattr(item.dep.handler, "__name__", str(item.dep.handler))
            side = "out" if "out" in fn else "in"
            members.append(Member(name, side, torch.as_tensor(item.idxs, dtype=torch.long),
                                  torch.as_tensor(item.root_idxs, dtype=torch.long)))
            if isinstance(module, nn.Conv2d) and 1 < module.groups and not (
                    module.groups == module.in_channels == module.out_channels):
                blocked = True
            layer = self.bayes.get(name)
            if layer is None:
                continue
            carries = (layer.group_dim == "out" and side == "out") or (layer.group_dim == "in" and side == "in")
            if carries:
                stat = layer.group_log_alpha().detach().cpu().double()
                values.append(stat[members[-1].idxs])
                positions.append(members[-1].root_idxs)
        stat = None
        if values and not blocked:
            values, positions = torch.cat(values), torch.cat(positions)
            if reduce == "min":
                stat = torch.full((size,), float("inf"), dtype=torch.float64).scatter_reduce(
                    0, positions, values, "amin")
            else:
                total = torch.zeros(size, dtype=torch.float64).scatter_add(0, positions, values)
                stat = total / torch.zeros(size, dtype=torch.float64).scatter_add(0, positions,
                                                                                  torch.ones_like(values))
            stat = torch.where(torch.isfinite(stat), stat, torch.full_like(stat, -float("inf")))
        return CoupledGroup(names[root_item.dep.target.module], root_item.dep.handler, size, members, stat)

    @property
    def prunable_groups(self) -> list[CoupledGroup]:
        return [g for g in self.groups if g.prunable]

    def stats(self) -> list[torch.Tensor]:
        return [g.stat.float() for g in self.prunable_groups]

    def keep_from_thresholds(self, thresholds: list[float]) -> list[torch.Tensor]:
        return [g.stat < t for g, t in zip(self.prunable_groups, thresholds)]

    def prune(self, keep: list[torch.Tensor], fill: Callable[[str, nn.Module], torch.Tensor] | None = None,
              message: str | None = None) -> nn.Module:
        """The physically pruned plain model for per-group keep masks (one per prunable group, in order).

        ``fill(name, layer)``, if given, replaces each Linear/Conv2d weight before pruning (used to carry posterior
        variances and index maps through exactly the same surgery). Raises :class:`PruneError` if a group would
        lose every channel.
        """
        groups = self.prunable_groups
        if len(keep) != len(groups):
            raise ValueError(f"expected {len(groups)} group masks, got {len(keep)}")
        for group, mask in zip(groups, keep):
            if not bool(mask.any()):
                raise PruneError(
                    f"the thresholds prune every channel of the coupled group rooted at {group.root!r} "
                    f"({group.describe()}), which would "
                    "disconnect the network; " + (message or "raise the threshold or use the automatic threshold "
                                                  "search.") + " The model is unchanged.")
        model = copy.deepcopy(self.plain)
        if fill is not None:
            with torch.no_grad():
                for name, module in model.named_modules():
                    if isinstance(module, (nn.Linear, nn.Conv2d)):
                        module.weight.copy_(fill(name, module))
        graph = self._graph(model)
        for group, mask in zip(groups, keep):
            drop = torch.nonzero(~mask.bool()).flatten().tolist()
            if drop:
                graph.get_pruning_group(model.get_submodule(group.root), group.handler, drop).prune()
        for parameter in model.parameters():
            parameter.grad = None
        return model.eval()

    def layer_keeps(self, keep: list[torch.Tensor]) -> tuple[list[str], PruningPlan]:
        """Names of the prunable layers and, per layer, the kept input channels/features and output units, in the
        dense layer's coordinates (what :meth:`prune` keeps)."""
        layers = {n: m for n, m in self.plain.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        out_keep = {n: torch.ones(m.weight.shape[0], dtype=torch.bool) for n, m in layers.items()}
        in_keep = {n: torch.ones(m.in_features if isinstance(m, nn.Linear) else m.in_channels, dtype=torch.bool)
                   for n, m in layers.items()}
        for group, mask in zip(self.prunable_groups, keep):
            for member in group.members:
                dropped = member.idxs[~mask.bool()[member.root_idxs]]
                (out_keep if member.side == "out" else in_keep)[member.layer][dropped] = False
        for name, module in layers.items():  # depthwise: each input channel belongs to its output channel
            if isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1:
                both = out_keep[name] & in_keep[name]
                out_keep[name], in_keep[name] = both, both.clone()
        names = list(layers)
        return names, PruningPlan([in_keep[n] for n in names], [out_keep[n] for n in names])

    def weights_kept(self, keep: list[torch.Tensor]) -> int:
        """Linear/Conv2d weights of the model :meth:`prune` would build, without building it."""
        names, plan = self.layer_keeps(keep)
        total = 0
        for name, keep_in, keep_out in zip(names, plan.in_keep, plan.out_keep):
            module = self.plain.get_submodule(name)
            if isinstance(module, nn.Linear):
                total += int(keep_in.sum()) * int(keep_out.sum())
            elif module.groups == module.in_channels == module.out_channels:
                total += int(keep_out.sum()) * module.weight[0].numel()
            else:  # regular (groups 1) or grouped convs, whose channels are never pruned
                total += int(keep_out.sum()) * int(keep_in.sum()) // module.groups * module.weight[0, 0].numel()
        return total

    @contextlib.contextmanager
    def masked(self, model: nn.Module, keep: list[torch.Tensor]) -> Iterator[None]:
        """Inside the block, every layer of ``model`` (the analysed model or its plain copy) that reads a pruned
        channel sees zeros there. A removed channel influences the output only through the layers that read it, so
        this computes what the pruned network computes, without building it."""
        names, plan = self.layer_keeps(keep)
        handles = []
        for name, keep_in in zip(names, plan.in_keep):
            if bool(keep_in.all()):
                continue
            module = model.get_submodule(name)
            shape = (1, -1) if isinstance(self.plain.get_submodule(name), nn.Linear) else (1, -1, 1, 1)
            factor = keep_in.to(torch.float32).view(shape)

            def hook(module: nn.Module, args: tuple, factor: torch.Tensor = factor) -> tuple:
                return (args[0] * factor.to(args[0].device, args[0].dtype),) + tuple(args[1:])

            handles.append(module.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _index_fill(dim: int) -> Callable[[str, nn.Module], torch.Tensor]:
    """A weight filler writing each entry's index along ``dim`` (exact in float32 up to 2**24 channels)."""

    def fill(name: str, module: nn.Module) -> torch.Tensor:
        shape = [1] * module.weight.dim()
        shape[dim] = module.weight.shape[dim]
        return torch.arange(module.weight.shape[dim], dtype=torch.float32).view(shape).expand_as(module.weight)

    return fill
