"""Compression: posterior -> masks -> physically smaller plain model -> bit precision -> packed file.

:func:`compress` is the single entry point every method goes through.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from bayescomp.compress.chain import Chain, UnsupportedModelError, build_chain
from bayescomp.compress.fold import fold_empty_units
from bayescomp.compress.masks import (
    PruneError, PruningPlan, full_architecture, group_keep_from_thresholds, group_statistics, masked, propagate,
)
from bayescomp.compress.precision import LayerPrecision, layer_precisions, quantize_fixed_point
from bayescomp.compress.search import global_threshold_search, greedy_threshold_search
from bayescomp.compress.packed import QuantSpec, packed_leaves, save_packed
from bayescomp.compress.shrink import kept_weight_variances, shrink
from bayescomp.compress.storage import compression_csr
from bayescomp.data import TensorData
from bayescomp.priors.base import deterministic_mode
from bayescomp.evaluation import evaluate


SEARCHES = ("auto", "greedy", "global")


@dataclass
class CompressConfig:
    """How to read the posterior (saved with every run).

    Args:
        thresholds: threshold on each prunable layer's group statistic (keep a group if its statistic, e.g. log
            alpha, is below it), one value for all layers, ``"search"`` for the automatic search on the validation
            split, or ``None`` for the method's default: the search for the group priors, and the prior's own
            per-weight threshold (log alpha < 3) for per-weight priors such as Sparse VD, whose paper fixes it.
        tolerance_pct: the automatic search keeps the validation error within this many percentage points of the
            unpruned posterior-mean model's.
        bits_reduce: how a layer's significand bits summarise its weights' bits: ``"mean"`` or ``"max"``.
        min_bits: lower bound on significand bits per layer.
        search_val_size: validation examples used by the search (``None``: all).
        finetune_search: with fine-tuning enabled (see :mod:`bayescomp.pipeline`), choose among the greedy
            search's candidates the most compressed one whose *fine-tuned* validation error stays within
            ``tolerance_pct`` of the unpruned posterior mean's (bisection along the candidates); the greedy path itself is
            then explored up to ``search_range_pct`` points above the unpruned posterior mean.
        search_range_pct: how far the greedy candidates may go when ``finetune_search`` is on.
        fold_empty_units: remove neurons/filters whose incoming weights are all pruned, folding their constant
            output into the next layer's bias (exact; see :mod:`bayescomp.compress.fold`). Chains only.
        graph_reduce: for networks that are not chains, how the statistics of the layers sharing a channel
            combine: ``"min"`` (drop it only when every layer's posterior says so) or ``"mean"``
            (see :mod:`bayescomp.compress.graph`).
        search: ``"greedy"`` (per-layer thresholds, see :mod:`bayescomp.compress.search`), ``"global"`` (one
            threshold for all, by bisection: a few evaluations, for deep networks) or ``"auto"``: greedy for chains,
            global for graphs with more than 8 coupled groups (a ResNet-20 has 12).
    """

    thresholds: list[float] | float | str | None = None
    tolerance_pct: float = 0.2
    bits_reduce: str = "mean"
    min_bits: int = 1
    search_val_size: int | None = None
    finetune_search: bool = False
    search_range_pct: float = 3.0
    fold_empty_units: bool = True
    graph_reduce: str = "min"
    search: str = "auto"

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; use {', '.join(SEARCHES)}")


@dataclass
class CompressionResult:
    """Everything compression produced; ``model`` and ``quantized_model`` are plain ``nn.Sequential``s."""

    model: nn.Sequential
    quantized_model: nn.Sequential
    plan: PruningPlan
    thresholds: list[float]
    layer_names: list[str]
    architecture_dense: list[int]
    architecture_kept: list[int]
    weights_dense: int
    weights_kept: int
    precisions: list[LayerPrecision]
    log_alpha: list[torch.Tensor]
    search_path: list[dict[str, float]] = field(default_factory=list)
    base_val_error_pct: float | None = None
    #: what each entry of ``log_alpha``/``thresholds`` ranks: the layers of a chain (``None``), or the roots of
    #: the coupled channel groups of a graph (:mod:`bayescomp.compress.graph`)
    stat_names: list[str] | None = None
    #: the :class:`~bayescomp.compress.graph.DependencyGraph` the graph path pruned with (``None`` for chains)
    graph: object | None = None
    #: what the run that produced this result recorded beside it (training history, method-specific figures)
    extras: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> int:
        """Write the quantised compressed model as a packed file (``.bcz``, :mod:`bayescomp.compress.packed`);
        layers below 32 bits are stored at their bit width. Returns the file size in bytes."""
        quant = {}
        modules = packed_leaves(self.quantized_model)
        for layer, precision in zip(prunable_modules(self.quantized_model), self.precisions):
            if precision.total_bits >= 32:  # float32 layers (e.g. magnitude pruning) are stored as they are
                continue
            quant[next(i for i, m in enumerate(modules) if m is layer)] = QuantSpec(step=precision.step)
        return save_packed(self.quantized_model, path, quant, dict(metadata or {}))

    @property
    def weights_nonzero(self) -> int:
        """Non-zero weights of the compressed model (below ``weights_kept`` for per-weight sparsity)."""
        return sum(int(torch.count_nonzero(m.weight)) for m in prunable_modules(self.model))

    @property
    def compression_nonzero(self) -> float:
        """All weights of the dense network / non-zero weights (the parameter ratio of the Sparse VD paper)."""
        return self.weights_dense / max(self.weights_nonzero, 1)

    def compression_csr(self, quantized: bool = False) -> float:
        """32 x all weights / bits of the compressed layers in CSR (values + column indices + row pointers),
        values at float32, or at each layer's bit width with ``quantized`` (see :func:`csr_storage_bits`)."""
        weights = [m.weight.detach() for m in prunable_modules(self.quantized_model if quantized else self.model)]
        return compression_csr(self.weights_dense, weights, self.bits_per_layer if quantized else 32)

    @property
    def compression_architecture(self) -> float:
        """All weights of the dense network / weights of the pruned dense layers (biases excluded)."""
        return self.weights_dense / self.weights_kept

    @property
    def bits_per_layer(self) -> list[int]:
        return [p.total_bits for p in self.precisions]

    @property
    def compression_bits(self) -> float:
        """32 x all weights / sum over layers of kept weights x bits per weight (the paper's "fast" rate)."""
        kept = [m.weight.numel() for m in prunable_modules(self.model)]
        return 32.0 * self.weights_dense / sum(k * b for k, b in zip(kept, self.bits_per_layer))


def prunable_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def plan_from_thresholds(chain: Chain, thresholds: list[float] | float) -> tuple[PruningPlan, list[float]]:
    stats = group_statistics(chain)
    if not isinstance(thresholds, (list, tuple)):
        thresholds = [float(thresholds)] * len(stats)
    return propagate(chain, group_keep_from_thresholds(stats, thresholds)), [float(t) for t in thresholds]


def quantize_model(model: nn.Sequential, precisions: list[LayerPrecision]) -> nn.Sequential:
    """A copy of ``model`` whose Linear/Conv2d weights sit on each layer's fixed-point grid."""
    quantized = copy.deepcopy(model)
    for module, precision in zip(prunable_modules(quantized), precisions):
        with torch.no_grad():
            module.weight.copy_(quantize_fixed_point(module.weight, precision.significand_bits))
    return quantized


def _with_folded_units(chain: Chain, plan: PruningPlan) -> PruningPlan:
    """``plan`` minus the units whose incoming posterior-mean weights are all zero, their constants folded into the
    next layer's bias. The fold is computed on the unpruned network (so the constant meets every next-layer weight
    it would have met), then merged into the plan's group masks and propagated again."""
    folded, count = fold_empty_units(chain, PruningPlan.keep_all(chain))
    if not count:
        return plan
    groups = [(p_out if layer.kind == "conv" else p_in) & (f_out if layer.kind == "conv" else f_in)
              for layer, p_in, p_out, f_in, f_out in zip(chain.layers, plan.in_keep, plan.out_keep, folded.in_keep,
                                                         folded.out_keep)]
    merged = propagate(chain, groups)
    merged.bias_shift = folded.bias_shift
    return merged


def compress(model: nn.Module, val: TensorData | None, config: CompressConfig | None = None,
             log=None, example_input: torch.Tensor | None = None) -> CompressionResult:
    """Prune, shrink and quantise a trained Bayesian model. The model itself is left unchanged.

    Sequential chains of Linear/Conv2d layers take the chain path (input-feature pruning of the first Linear
    layer, folding of empty units); every other network (residual additions, concatenations, grouped or depthwise
    convolutions, any ``nn.Module``) goes through the dependency graph of :mod:`bayescomp.compress.graph`, which
    needs one example input: ``example_input``, or the first validation images.

    Raises:
        PruneError: the given thresholds would remove every unit of a layer.
        UnsupportedModelError: the model holds a module the compression path cannot prune.
    """
    config = config or CompressConfig()
    from bayescomp.hooks import warn_if_turbo_never_updated

    warn_if_turbo_never_updated(model)  # an own loop without bayescomp.after_step prunes nothing
    try:
        chain = build_chain(model)
    except UnsupportedModelError as chain_error:
        if example_input is None and val is None:
            raise UnsupportedModelError(f"{chain_error}; compressing it as a graph needs an example input "
                                        "(example_input=, or validation data)") from chain_error
        return compress_graph(model, val, config, example_input if example_input is not None else val.example(), log)
    stats = group_statistics(chain)
    path, base = [], None
    per_weight = [layer.module.weight_keep_mask() is not None for layer in chain.layers]
    thresholds = config.thresholds
    if thresholds is None:
        thresholds = [float(layer.module.config.threshold) for layer in chain.layers] if any(per_weight) else "search"
    if isinstance(thresholds, str) and thresholds != "search":
        raise ValueError(f"thresholds must be numbers, 'search' or None, got {thresholds!r}")
    with deterministic_mode(model):
        if thresholds == "search":
            if val is None:
                raise ValueError("the automatic threshold search needs validation data")
            subset = val if config.search_val_size is None else val.subset(config.search_val_size, seed=0)
            if config.search == "global":
                def error(plan: PruningPlan) -> float:
                    with masked(chain, plan):
                        return evaluate(model, subset)["error_pct"]

                result = global_threshold_search(
                    stats, lambda t: propagate(chain, group_keep_from_thresholds(stats, t)),
                    lambda plan: plan.weights_kept(chain), error, config.tolerance_pct, log)
            else:
                result = greedy_threshold_search(
                    chain, stats, lambda: evaluate(model, subset)["error_pct"], config.tolerance_pct, log=log
                )
            plan, thresholds, path, base = result.plan, result.thresholds, result.path, result.base_val_error_pct
        else:
            plan, thresholds = plan_from_thresholds(chain, thresholds)
        if config.fold_empty_units:
            plan = _with_folded_units(chain, plan)
        small = shrink(chain, plan)
        variances = kept_weight_variances(chain, plan)
    precisions = _stored_precisions(small, variances, per_weight, config)
    return CompressionResult(
        model=small,
        quantized_model=quantize_model(small, precisions),
        plan=plan,
        thresholds=thresholds,
        layer_names=[layer.name for layer in chain.layers],
        architecture_dense=full_architecture(chain),
        architecture_kept=plan.kept_architecture(chain),
        weights_dense=PruningPlan.keep_all(chain).weights_kept(chain),
        weights_kept=plan.weights_kept(chain),
        precisions=precisions,
        log_alpha=stats,
        search_path=path,
        base_val_error_pct=base,
    )


def _default_thresholds(model: nn.Module, thresholds):
    """``None`` means the prior's own per-weight threshold for per-weight priors, the search otherwise."""
    from bayescomp.priors.base import bayesian_layers

    layers = [layer for _, layer in bayesian_layers(model)]
    per_weight = [layer.weight_keep_mask() is not None for layer in layers]
    if thresholds is None:
        thresholds = "search" if not any(per_weight) else None
    if isinstance(thresholds, str) and thresholds != "search":
        raise ValueError(f"thresholds must be numbers, 'search' or None, got {thresholds!r}")
    return thresholds


def compress_graph(model: nn.Module, val: TensorData | None, config: CompressConfig, example_input: torch.Tensor,
                   log=None) -> CompressionResult:
    """The graph path of :func:`compress`: thresholds act on the coupled channel groups' statistics.

    With per-weight priors (Sparse VD, Turbo-VBI) and no thresholds given, no channel is removed by a group
    threshold: single weights are already zero in the posterior mean and the layers are stored sparsely.
    """
    from bayescomp.compress.graph import DependencyGraph
    from bayescomp.compress.search import greedy_search, thresholds_for_counts

    thresholds = _default_thresholds(model, config.thresholds)
    with deterministic_mode(model):
        graph = DependencyGraph(model, example_input, config.graph_reduce)
        stats = graph.stats()
        if not stats:
            raise UnsupportedModelError("no channel of the model can be pruned (no Bayesian layer carries a group "
                                        "statistic for a prunable channel group); bayesify and train it first")
        path, base = [], None
        if thresholds == "search":
            if val is None:
                raise ValueError("the automatic threshold search needs validation data")
            subset = val if config.search_val_size is None else val.subset(config.search_val_size, seed=0)

            def make(pruned: list[int]) -> list[torch.Tensor]:
                return make_keep(graph, thresholds_for_counts(stats, pruned))

            def error(keep: list[torch.Tensor]) -> float:
                with graph.masked(model, keep):
                    return evaluate(model, subset)["error_pct"]

            def describe(keep: list[torch.Tensor]) -> str:
                return f"channels {[int(k.sum()) for k in keep]}"

            if config.search == "global" or (config.search == "auto" and len(stats) > 8):
                found = global_threshold_search(stats, lambda t: make_keep(graph, t), graph.weights_kept, error,
                                                config.tolerance_pct, log, describe)
            else:
                found = greedy_search(stats, make, graph.weights_kept, error, config.tolerance_pct, log=log,
                                      describe=describe)
            keep, thresholds, path, base = found.plan, found.thresholds, found.path, found.base_val_error_pct
        else:
            if thresholds is None:
                thresholds = [float("inf")] * len(stats)
            elif not isinstance(thresholds, (list, tuple)):
                thresholds = [float(thresholds)] * len(stats)
            if len(thresholds) != len(stats):
                raise ValueError(f"expected {len(stats)} thresholds (one per coupled channel group: "
                                 f"{', '.join(g.root for g in graph.prunable_groups)}), got {len(thresholds)}")
            thresholds = [float(t) for t in thresholds]
            keep = graph.keep_from_thresholds(thresholds)
        small = graph.prune(keep)
        layers = dict(graph.bayes)
        names, plan = graph.layer_keeps(keep)
        variance_model = graph.prune(keep, lambda name, module: layers[name].posterior_weight_variance().detach()
                                     if name in layers else torch.zeros_like(module.weight))
    variances = [m.weight.detach() for m in prunable_modules(variance_model)]
    per_weight = [name in layers and layers[name].weight_keep_mask() is not None for name in names]
    precisions = _stored_precisions(small, variances, per_weight, config)
    return CompressionResult(
        model=small,
        quantized_model=quantize_model(small, precisions),
        plan=plan,
        thresholds=thresholds,
        layer_names=names,
        architecture_dense=_graph_architecture(graph.plain),
        architecture_kept=_graph_architecture(small),
        weights_dense=_weight_count(graph.plain),
        weights_kept=_weight_count(small),
        precisions=precisions,
        log_alpha=stats,
        search_path=path,
        base_val_error_pct=base,
        stat_names=[g.root for g in graph.prunable_groups],
        graph=graph,
    )


def make_keep(graph, thresholds: list[float]) -> list[torch.Tensor]:
    """Per-group keep masks for ``thresholds``; :class:`PruneError` if a group would lose every channel."""
    keep = graph.keep_from_thresholds(thresholds)
    for group, mask in zip(graph.prunable_groups, keep):
        if not bool(mask.any()):
            raise PruneError(f"group {group.root!r} would lose every channel")
    return keep


def _stored_precisions(small: nn.Module, variances: list, per_weight: list[bool],
                       config: CompressConfig) -> list[LayerPrecision]:
    """Per-layer bits of the shrunk model; for per-weight priors they come from the weights actually stored (the
    non-zero ones)."""
    weights = [m.weight.detach() for m in prunable_modules(small)]
    variances = [v[w != 0] if flag and bool((w != 0).any()) else v for v, w, flag in zip(variances, weights, per_weight)]
    return layer_precisions(variances, weights, config.bits_reduce, config.min_bits)


def _weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_modules(model))


def _graph_architecture(model: nn.Module) -> list[int]:
    """Group counts as the papers write them: conv output filters, Linear input features."""
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.in_features for m in prunable_modules(model)]


__all__ = [
    "CompressConfig", "CompressionResult", "PruneError", "PruningPlan", "UnsupportedModelError", "build_chain",
    "compress", "compress_graph", "masked", "plan_from_thresholds", "propagate", "quantize_model", "shrink",
]
