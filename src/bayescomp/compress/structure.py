"""What compression needs to know about a network's structure, implemented by the chain and by the graph.

Compression reads one statistic per prunable unit group from the posterior, turns thresholds on it into a plan,
evaluates masked plans during the search, and finally cuts the plain network. Two structures do that:

* :class:`ChainStructure`: a ``Sequential`` chain of Linear/Conv2d layers (:mod:`bayescomp.compress.chain`): the
  groups are each layer's input neurons (Linear) or output filters (Conv2d), pruning propagates along the chain,
  the first Linear layer may drop input features, and neurons whose incoming weights are all zero are folded;
* :class:`GraphStructure`: any other network (residual additions, concatenations, grouped convolutions), whose
  coupled channel groups come from the dependency graph (:mod:`bayescomp.compress.graph`).

:func:`bayescomp.compress.compress` runs the same steps on either (one threshold normaliser, one search, one
:class:`~bayescomp.compress.CompressionResult`); only the methods below differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bayescomp.compress.chain import Chain
from bayescomp.compress.fold import drop_unread_units, fold_empty_units
from bayescomp.compress.masks import (
    PruneError, PruningPlan, full_architecture, group_keep_from_thresholds, group_statistics, masked, propagate,
)
from bayescomp.compress.search import thresholds_for_counts
from bayescomp.compress.shrink import kept_weight_variances, shrink


def prunable_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@dataclass
class Cut:
    """A structure's pruned plain network and what the result reports about it."""

    model: nn.Module
    plan: PruningPlan
    layer_names: list[str]
    architecture_dense: list[int]
    architecture_kept: list[int]
    weights_dense: int
    weights_kept: int
    variances: list[torch.Tensor | None]
    per_weight: list[bool]


def deploy_threshold(config: Any) -> float:
    """A per-weight prior's pruning threshold for the deployed network: its config's ``deploy_threshold`` (Sparse
    VD and Turbo-VBI may set a ``prune_threshold`` apart from the training one), else its ``threshold``."""
    return float(getattr(config, "deploy_threshold", config.threshold))


class ChainStructure:
    """A Sequential chain (see the module doc); plans are :class:`~bayescomp.compress.masks.PruningPlan`."""

    stat_names: list[str] | None = None
    graph: Any = None

    def __init__(self, model: nn.Module, chain: Chain) -> None:
        self.model, self.chain = model, chain
        self.stats = group_statistics(chain)
        self.per_weight = [layer.module.weight_keep_mask() is not None for layer in chain.layers]

    def default_thresholds(self) -> list[float] | str:
        """Per-weight priors: each layer's own threshold (the prior's paper fixes it); group priors: the search."""
        if any(self.per_weight):
            return [deploy_threshold(layer.module.config) for layer in self.chain.layers]
        return "search"

    def prefers_global_search(self, search: str) -> bool:
        return search == "global"

    def plan(self, thresholds: list[float]) -> PruningPlan:
        return propagate(self.chain, group_keep_from_thresholds(self.stats, thresholds))

    def strict_plan(self, thresholds: list[float]) -> PruningPlan:
        return self.plan(thresholds)

    def plan_for_counts(self, pruned: list[int]) -> PruningPlan:
        """The plan that prunes the ``pruned[l]`` groups with the largest statistic of each layer (greedy search)."""
        return propagate(self.chain, [s < t for s, t in zip(self.stats, thresholds_for_counts(self.stats, pruned))])

    def weights_kept(self, plan: PruningPlan) -> int:
        return plan.weights_kept(self.chain)

    def masked(self, plan: PruningPlan):
        return masked(self.chain, plan)

    def describe_greedy(self, plan: PruningPlan) -> str:
        return f"arch {plan.kept_architecture(self.chain)}"

    def describe_global(self, plan: PruningPlan) -> str:
        return ""

    def fold(self, plan: PruningPlan) -> PruningPlan:
        """``plan`` minus the units whose incoming posterior-mean weights are all zero, their constants folded into
        the next layer's bias. The fold is computed on the unpruned network (so the constant meets every next-layer
        weight it would have met), then merged into the plan's group masks and propagated again. Units no kept
        weight of the next layer reads are dropped too (:func:`~bayescomp.compress.fold.drop_unread_units`)."""
        folded, count = fold_empty_units(self.chain, PruningPlan.keep_all(self.chain))
        if not count:
            return drop_unread_units(self.chain, plan)[0]
        groups = [(p_out if layer.kind == "conv" else p_in) & (f_out if layer.kind == "conv" else f_in)
                  for layer, p_in, p_out, f_in, f_out in zip(self.chain.layers, plan.in_keep, plan.out_keep,
                                                             folded.in_keep, folded.out_keep)]
        merged = propagate(self.chain, groups)
        merged.bias_shift = folded.bias_shift
        return drop_unread_units(self.chain, merged)[0]

    def cut(self, plan: PruningPlan) -> Cut:
        chain = self.chain
        return Cut(shrink(chain, plan), plan, [layer.name for layer in chain.layers], full_architecture(chain),
                   plan.kept_architecture(chain), PruningPlan.keep_all(chain).weights_kept(chain),
                   plan.weights_kept(chain), kept_weight_variances(chain, plan), self.per_weight)


class GraphStructure:
    """Any network, through its dependency graph; plans are per-group keep masks (lists of bool tensors)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, reduce: str,
                 channel_score: str = "log_alpha") -> None:
        from bayescomp.compress.chain import UnsupportedModelError
        from bayescomp.compress.graph import DependencyGraph

        self.model = model
        self.graph = DependencyGraph(model, example_input, reduce, channel_score)
        self.stats = self.graph.stats()  # the same statistic the graph's plans compare thresholds with
        if not self.stats:
            raise UnsupportedModelError("no channel of the model can be pruned (no Bayesian layer carries a group "
                                        "statistic for a prunable channel group); bayesify and train it first")
        self.stat_names = [g.root for g in self.graph.prunable_groups]
        self.layers = dict(self.graph.bayes)

    def default_thresholds(self) -> list[float] | str:
        """Group priors: the search; per-weight priors: no channel removed by a group threshold (single weights are
        already zero in the posterior mean, and the layers are stored sparsely)."""
        if any(layer.weight_keep_mask() is not None for layer in self.layers.values()):
            return [float("inf")] * len(self.stats)
        return "search"

    def prefers_global_search(self, search: str) -> bool:
        """Greedy costs rounds x groups evaluations: bisection instead for deep networks (> 8 coupled groups)."""
        return search == "global" or (search == "auto" and len(self.stats) > 8)

    def plan(self, thresholds: list[float]) -> list[torch.Tensor]:
        return self.graph.keep_from_thresholds(thresholds)

    def strict_plan(self, thresholds: list[float]) -> list[torch.Tensor]:
        """:meth:`plan`, refusing (:class:`PruneError`) a group that would lose every channel (the search)."""
        keep = self.plan(thresholds)
        for group, mask in zip(self.graph.prunable_groups, keep):
            if not bool(mask.any()):
                raise PruneError(f"group {group.root!r} would lose every channel")
        return keep

    def plan_for_counts(self, pruned: list[int]) -> list[torch.Tensor]:
        return self.strict_plan(thresholds_for_counts(self.stats, pruned))

    def weights_kept(self, keep: list[torch.Tensor]) -> int:
        return self.graph.weights_kept(keep)

    def masked(self, keep: list[torch.Tensor]):
        return self.graph.masked(self.model, keep)

    def describe_greedy(self, keep: list[torch.Tensor]) -> str:
        return f"channels {[int(k.sum()) for k in keep]}"

    describe_global = describe_greedy

    def fold(self, keep: list[torch.Tensor]) -> list[torch.Tensor]:
        return keep  # folding empty units is a chain feature

    def cut(self, keep: list[torch.Tensor]) -> Cut:
        graph, layers = self.graph, self.layers
        small = graph.prune(keep)
        names, plan = graph.layer_keeps(keep)
        variance_model = graph.prune(keep, lambda name, module: layers[name].posterior_weight_variance().detach()
                                     if name in layers else torch.zeros_like(module.weight))
        variances = [m.weight.detach() for m in prunable_modules(variance_model)]
        per_weight = [name in layers and layers[name].weight_keep_mask() is not None for name in names]
        return Cut(small, plan, names, _architecture(graph.plain), _architecture(small), _weight_count(graph.plain),
                   _weight_count(small), variances, per_weight)


Structure = ChainStructure | GraphStructure


def normalize_thresholds(thresholds: Any, structure: Structure) -> list[float] | str:
    """The one reading of ``CompressConfig.thresholds``: ``None`` -> the structure's default, ``"search"`` as it
    is, one number -> that number for every group, a list -> checked against the number of groups."""
    if thresholds is None:
        return structure.default_thresholds()
    if isinstance(thresholds, str):
        if thresholds != "search":
            raise ValueError(f"thresholds must be numbers, 'search' or None, got {thresholds!r}")
        return thresholds
    count = len(structure.stats)
    if not isinstance(thresholds, (list, tuple)):
        return [float(thresholds)] * count
    if structure.stat_names is not None and len(thresholds) != count:
        raise ValueError(f"expected {count} thresholds (one per coupled channel group: "
                         f"{', '.join(structure.stat_names)}), got {len(thresholds)}")
    return [float(t) for t in thresholds]


def _weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_modules(model))


def _architecture(model: nn.Module) -> list[int]:
    """Group counts as the papers write them: conv output filters, Linear input features."""
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.in_features for m in prunable_modules(model)]
