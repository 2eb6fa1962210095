"""Compression: posterior -> masks -> physically smaller plain model -> bit precision -> packed file.

:func:`compress` is the single entry point every method goes through.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from bayescomp.compress.batchnorm import recalibrate_batchnorm, recalibrated_batchnorm
from bayescomp.compress.chain import Chain, UnsupportedModelError, build_chain
from bayescomp.compress.graph import CHANNEL_SCORES
from bayescomp.compress.macs import count_flops
from bayescomp.compress.masks import (
    PruneError, PruningPlan, group_keep_from_thresholds, group_statistics, masked, propagate,
)
from bayescomp.compress.packed import QuantSpec, packed_leaves, save_packed
from bayescomp.compress.precision import (
    BitWidths, LayerPrecision, layer_precisions, quantize_fixed_point,
)
from bayescomp.compress.search import (
    BUDGET_ORDERS, SearchResult, budget_greedy_search, budget_threshold_search, budget_uniform_search,
    global_threshold_search, greedy_search,
)
from bayescomp.compress.shrink import shrink
from bayescomp.compress.storage import compression_csr
from bayescomp.compress.structure import (
    ChainStructure, GraphStructure, Structure, normalize_thresholds, prunable_modules,
)
from bayescomp.data_sources import Split
from bayescomp.evaluation import evaluate, placed
from bayescomp.priors.base import deterministic_mode


SEARCHES = ("auto", "greedy", "global", "uniform")
CUT_WEIGHTS = ("posterior", "dense")  # whose weights the pruned model takes (CompressConfig.cut_weights)


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
        search_bn_images: before scoring each candidate of the search, re-estimate the batch-norm statistics on
            this many validation images (labels unused; a seeded draw separate from the scoring subset, which it
            may overlap) and restore them afterwards (:mod:`bayescomp.compress.batchnorm`; 0: off, the statistics of
            the unpruned network). The delivered cut keeps the statistics re-estimated on the same images, so it is
            the model the search scored (a BC-GNJ ResNet-20 cut to 3.13x fewer MACs, not fine-tuned: 61.4 % test
            error with them, 89.5 % with the unpruned network's). Only models with batch norm are affected.
        finetune_search: with fine-tuning enabled (see :mod:`bayescomp.pipeline`), choose among the greedy
            search's candidates the most compressed one whose *fine-tuned* validation error stays within
            ``tolerance_pct`` of the unpruned posterior mean's (bisection along the candidates); the greedy path itself is
            then explored up to ``search_range_pct`` points above the unpruned posterior mean.
        search_range_pct: how far the greedy candidates may go when ``finetune_search`` is on.
        fold_empty_units: remove neurons/filters whose incoming weights are all pruned, folding their constant
            output into the next layer's bias, and those whose outgoing weights are all pruned (both exact; see
            :mod:`bayescomp.compress.fold`). Chains only.
        graph_reduce: for networks that are not chains, how the statistics of the layers sharing a channel
            combine: ``"min"`` (drop it only when every layer's posterior says so) or ``"mean"``
            (see :mod:`bayescomp.compress.graph`).
        search: ``"greedy"`` (per-layer thresholds, see :mod:`bayescomp.compress.search`), ``"global"`` (one
            threshold for all, by bisection: a few evaluations, for deep networks) or ``"auto"``: greedy for chains,
            global for graphs with more than 8 coupled groups (a ResNet-20 has 12). With a budget, ``"uniform"``
            prunes the same fraction of every unit's groups, the least that meets it (the uniform per-layer ratio of
            structured pruning tools, :func:`~bayescomp.compress.search.budget_uniform_search`); the posterior
            then decides only which groups go within each unit. Our option, not the paper's.
        finetune_guard: keep the fine-tuned weights of the pruned model only if its validation error did not
            rise; otherwise the pruned weights before fine-tuning are kept (the report says which). A rule on the
            validation split, so a fine-tuning recipe that hurts (measured: one epoch of Adam at 1e-3 raised a
            pruned pretrained ResNet-20 from 11.12 % to 14.83 % test error) cannot make the result worse.
        target_macs: prune to a compute budget instead of an error tolerance: at least this many times fewer
            multiply-accumulates than the dense network (e.g. ``2.0``), with one threshold shared by every group
            (the least pruning that meets it; see :func:`~bayescomp.compress.search.budget_threshold_search`),
            or, with ``search="greedy"``, per-unit counts spread across units by the validation error
            (:func:`~bayescomp.compress.search.budget_greedy_search`). The posterior ranks the groups, the budget
            says how many go; ``tolerance_pct`` is then unused. This is
            how structured pruning tools are driven (a target ratio), so the two compare at equal MACs.
        target_weights: a budget on the weights kept, alone or beside ``target_macs``: at least this many times
            fewer weights than the dense network. Both budgets must be met; the greedy search then counts a step's
            saving as the fractions of MACs and of weights it removes while each is over budget. Cutting MACs and
            weights are different cuts on a CNN (the early layers hold the MACs, the late ones the weights).
        budget_order: with both budgets and ``search="greedy"``, how a step's saving is counted: ``"joint"``
            (the sum above), ``"weights_first"`` (the weights alone until their budget is met, then the MACs) or
            ``"macs_first"``. ``"weights_first"`` stops nearer the MAC budget on a CNN, whose late-layer cuts
            remove MACs on the way (:func:`~bayescomp.compress.search.budget_greedy_search`).
        cut_weights: whose weights the pruned model takes. ``"posterior"`` (default): the posterior means, as the
            paper does. ``"dense"``: the posterior still decides every channel that goes (search and plan are
            unchanged), but the cut is taken from the dense network the run started from (weights and batch-norm
            statistics), so fine-tuning starts from the pretrained weights. Measured on ResNet-20/CIFAR-10, where
            a short Bayesian phase moves the weights away from a good start: the same channels fine-tuned from the
            dense weights reached 11.79 % against 12.37 % from the posterior means (docs/limits.md). Group priors
            on the dependency-graph path only (a per-weight prior's zeros would be lost); :func:`compress` then
            needs ``dense``.
        channel_score: what orders a coupled group's channels for pruning. ``"log_alpha"`` (default, the paper's):
            the group scale's log alpha. ``"snr"``: minus the log of the posterior signal-to-noise ratio
            E[w]² / Var[w] summed over every weight the channel takes with it (its filters and the consumers' input
            slices), a second-order saliency read from the posterior that batch norm's rescaling leaves unchanged
            (:func:`~bayescomp.compress.graph.snr_statistic`). A choice of this project, not the paper's; it has no
            calibrated threshold, so it needs a budget (``target_macs`` / ``target_weights``), and it works on the
            dependency-graph path. The thresholds a run reports are then on that scale.
        round_to: with ``search="uniform"`` or ``"greedy"``, every coupled group keeps a multiple of this many
            channels (rounded down, at least ``round_to``; groups smaller than it are not rounded), as
            Torch-Pruning's ``round_to``. Kernels work on channels in vector-width blocks (16 float32 lanes with
            AVX-512), so a group of 9 or 18 channels costs nearly what 16 or 32 cost
            (``benchmarks/channel_widths.py`` measures it). 1: no rounding. Our option, not the paper's.
    """

    thresholds: list[float] | float | str | None = None
    tolerance_pct: float = 0.2
    bits_reduce: str = "mean"
    min_bits: int = 1
    search_val_size: int | None = None
    search_bn_images: int = 0
    finetune_search: bool = False
    search_range_pct: float = 3.0
    fold_empty_units: bool = True
    graph_reduce: str = "min"
    search: str = "auto"
    finetune_guard: bool = True
    target_macs: float | None = None
    target_weights: float | None = None
    budget_order: str = "joint"
    cut_weights: str = "posterior"
    channel_score: str = "log_alpha"
    round_to: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to is a channel count >= 1 (1: no rounding), got {self.round_to!r}")
        if self.round_to > 1 and self.search not in ("uniform", "greedy"):
            raise ValueError(f"round_to={self.round_to} rounds the channel counts of the budget searches: use "
                             "search='uniform' or search='greedy' with target_macs and/or target_weights")
        if self.channel_score not in CHANNEL_SCORES:
            raise ValueError(f"unknown channel_score {self.channel_score!r}; use {', '.join(CHANNEL_SCORES)}")
        if self.channel_score == "snr" and self.target_macs is None and self.target_weights is None:
            raise ValueError("channel_score='snr' has no calibrated threshold: give a budget (target_macs and/or "
                             "target_weights)")
        if self.cut_weights not in CUT_WEIGHTS:
            raise ValueError(f"unknown cut_weights {self.cut_weights!r}; use {', '.join(CUT_WEIGHTS)}")
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; use {', '.join(SEARCHES)}")
        if self.search == "uniform" and not self.budgeted:
            raise ValueError("search='uniform' spreads a budget evenly over the units: give target_macs and/or "
                             "target_weights")
        if self.budget_order not in BUDGET_ORDERS:
            raise ValueError(f"unknown budget_order {self.budget_order!r}; use {', '.join(BUDGET_ORDERS)}")
        if isinstance(self.search_bn_images, bool) or not isinstance(self.search_bn_images, int) \
                or self.search_bn_images < 0:
            raise ValueError(f"search_bn_images is a count of images (0: off), got {self.search_bn_images!r}")
        for name, what in (("target_macs", "MACs"), ("target_weights", "weights")):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 1.0):
                raise ValueError(f"{name} is a reduction factor above 1 (e.g. 2.0 for half the {what}), got "
                                 f"{value!r}")
            if self.thresholds not in (None, "search"):
                raise ValueError(f"{name} chooses the threshold itself; leave thresholds unset")

    @property
    def budgeted(self) -> bool:
        """Whether pruning is driven by a budget (MACs and/or weights) instead of the error tolerance."""
        return self.target_macs is not None or self.target_weights is not None


@dataclass
class CompressionResult(BitWidths):
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
        return save_quantized(self.quantized_model, self.precisions, path, metadata)

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



def save_quantized(model: nn.Module, precisions: list[LayerPrecision], path: str | os.PathLike,
                   metadata: dict | None = None) -> int:
    """Write a quantised model as a packed file, every Linear/Conv2d layer below 32 bits stored at its bit width
    (``precisions`` in :func:`prunable_modules` order). Returns the file size in bytes."""
    quant = {}
    modules = packed_leaves(model)
    for layer, precision in zip(prunable_modules(model), precisions):
        if precision.total_bits >= 32:  # float32 layers (e.g. magnitude pruning) are stored as they are
            continue
        quant[next(i for i, m in enumerate(modules) if m is layer)] = QuantSpec(step=precision.step)
    return save_packed(model, path, quant, dict(metadata or {}))


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


def compress(model: nn.Module, val: Split | None, config: CompressConfig | None = None,
             log=None, example_input: torch.Tensor | None = None,
             device: str | torch.device | None = None, dense: nn.Module | None = None) -> CompressionResult:
    """Prune, shrink and quantise a trained Bayesian model. The model itself is left unchanged.

    Sequential chains of Linear/Conv2d layers take the chain structure (input-feature pruning of the first Linear
    layer, folding of empty units); every other network (residual additions, concatenations, grouped or depthwise
    convolutions, any ``nn.Module``) goes through the dependency graph of :mod:`bayescomp.compress.graph`, which
    needs one example input: ``example_input``, or the first validation images. Both are a
    :mod:`~bayescomp.compress.structure`; everything below is the same for either. ``device``: where the
    threshold search evaluates the masked model (moved there for each evaluation and back; e.g. ``"cuda"``, where
    a search's hundred evaluations take seconds instead of minutes on a CPU); everything else runs where the model is.
    ``dense``: the plain network the Bayesian one was made from, whose weights the cut takes with
    ``config.cut_weights="dense"`` (unused otherwise).

    Raises:
        PruneError: the given thresholds would remove every unit of a layer.
        UnsupportedModelError: the model holds a module the compression path cannot prune.
    """
    config = config or CompressConfig()
    from bayescomp.hooks import warn_if_turbo_never_updated

    warn_if_turbo_never_updated(model)  # an own loop without bayescomp.after_step prunes nothing
    with deterministic_mode(model):
        structure = _structure(model, val, config, example_input)
    return _compress_with(model, val, config, structure, log, device, dense)


def _compress_with(model: nn.Module, val: Split | None, config: CompressConfig, structure: Structure,
                   log, device: str | torch.device | None = None, dense: nn.Module | None = None
                   ) -> CompressionResult:
    """Thresholds (given, the structure's default, or searched on ``val``) -> plan -> cut -> bits -> result."""
    with deterministic_mode(model):
        thresholds = "search" if config.budgeted else normalize_thresholds(config.thresholds, structure)
        path, base = [], None
        calibration = _calibration_images(val, config)
        if thresholds == "search":
            if val is None:
                raise ValueError("the automatic threshold search (and a target_macs / target_weights budget) "
                                 "needs validation data")
            subset = val if config.search_val_size is None else val.subset(config.search_val_size, seed=0)
            found = _search(model, structure, subset, calibration, config, log, device)
            plan, thresholds, path, base = found.plan, found.thresholds, found.path, found.base_val_error_pct
        else:
            plan = structure.plan(thresholds)
        if config.fold_empty_units:
            plan = structure.fold(plan)
        if config.cut_weights == "dense":
            _take_dense_weights(structure, dense)
        cut = structure.cut(plan)
        if calibration is not None:
            recalibrate_batchnorm(cut.model, calibration)
        if config.cut_weights == "dense" and any(cut.per_weight):
            raise ValueError("cut_weights='dense' would drop the per-weight zeros of "
                             f"{', '.join(n for n, p in zip(cut.layer_names, cut.per_weight) if p)}; "
                             "it is meant for group priors (gnj, ghs)")
    precisions = _stored_precisions(cut.model, cut.variances, cut.per_weight, config)
    return CompressionResult(
        model=cut.model, quantized_model=quantize_model(cut.model, precisions), plan=cut.plan, thresholds=thresholds,
        layer_names=cut.layer_names, architecture_dense=cut.architecture_dense,
        architecture_kept=cut.architecture_kept, weights_dense=cut.weights_dense, weights_kept=cut.weights_kept,
        precisions=precisions, log_alpha=structure.stats, search_path=path, base_val_error_pct=base,
        stat_names=structure.stat_names, graph=structure.graph,
    )


def _take_dense_weights(structure: Structure, dense: nn.Module | None) -> None:
    """Load the dense network's weights and batch-norm statistics into the plain copy the graph cuts from
    (``CompressConfig.cut_weights="dense"``); the module names are the same, the Bayesian layers' plain twins."""
    if dense is None:
        raise ValueError("cut_weights='dense' needs the dense model: compress(..., dense=...)")
    if structure.graph is None:
        raise ValueError("cut_weights='dense' works on the dependency-graph path; this model was compressed as a "
                         "chain (use compress_graph, or cut_weights='posterior')")
    structure.graph.plain.load_state_dict(dense.state_dict())


def _structure(model: nn.Module, val: Split | None, config: CompressConfig,
               example_input: torch.Tensor | None) -> Structure:
    """The chain structure where the model is a supported Sequential chain, the dependency graph otherwise (and
    always for ``channel_score="snr"``, which the graph computes)."""
    reason = f"channel_score={config.channel_score!r} is read through the dependency graph"
    if config.channel_score == "log_alpha":
        try:
            return ChainStructure(model, build_chain(model))
        except UnsupportedModelError as chain_error:
            reason = str(chain_error)
    if example_input is None and val is None:
        raise UnsupportedModelError(f"{reason}; compressing it as a graph needs an example input "
                                    "(example_input=, or validation data)")
    return GraphStructure(model, example_input if example_input is not None else val.example(),
                          config.graph_reduce, config.channel_score)


def _calibration_images(val: Split | None, config: CompressConfig) -> Split | None:
    """The validation images the batch-norm statistics are re-estimated on (``config.search_bn_images``), or None."""
    if not config.search_bn_images or val is None:
        return None
    return val.subset(min(config.search_bn_images, len(val)), seed=1)


def _search(model: nn.Module, structure: Structure, subset: Split, calibration: Split | None,
            config: CompressConfig, log, device: str | torch.device | None = None) -> SearchResult:
    """The threshold search on the validation ``subset``: greedy per-unit thresholds, or one global threshold by
    bisection where the structure prefers it (see :mod:`bayescomp.compress.search`). ``calibration``: the images
    batch-norm statistics are re-estimated on before each score (None: off)."""

    def error(plan) -> float:
        with structure.masked(plan), placed(model, device):
            if calibration is None:
                return evaluate(model, subset)["error_pct"]
            with recalibrated_batchnorm(model, calibration):
                return evaluate(model, subset)["error_pct"]

    if config.budgeted:
        shape = tuple(subset.example(1).shape[1:])
        keep_all = structure.plan([math.inf] * len(structure.stats))
        dense_macs = count_flops(structure.cut(keep_all).model, shape)
        mac_budget = math.inf if config.target_macs is None else dense_macs / config.target_macs
        weight_budget = (None if config.target_weights is None
                         else structure.weights_kept(keep_all) / config.target_weights)

        def macs(plan) -> float:
            return count_flops(structure.cut(plan).model, shape)

        if config.search == "greedy":
            return budget_greedy_search(structure.stats, structure.plan_for_counts, macs, mac_budget,
                                        structure.weights_kept, error, log=log, describe=structure.describe_greedy,
                                        weight_budget=weight_budget, order=config.budget_order,
                                        round_to=config.round_to)
        if config.search == "uniform":
            return budget_uniform_search(structure.stats, structure.plan_for_counts, macs, mac_budget,
                                         structure.weights_kept, error, log, structure.describe_greedy,
                                         weight_budget=weight_budget, round_to=config.round_to)
        return budget_threshold_search(structure.stats, structure.strict_plan, macs, mac_budget,
                                       structure.weights_kept, error, log, structure.describe_global,
                                       weight_budget=weight_budget)
    if structure.prefers_global_search(config.search):
        return global_threshold_search(structure.stats, structure.strict_plan, structure.weights_kept, error,
                                       config.tolerance_pct, log, structure.describe_global)
    return greedy_search(structure.stats, structure.plan_for_counts, structure.weights_kept, error,
                         config.tolerance_pct, log=log, describe=structure.describe_greedy)


def compress_graph(model: nn.Module, val: Split | None, config: CompressConfig, example_input: torch.Tensor,
                   log=None, device: str | torch.device | None = None, dense: nn.Module | None = None
                   ) -> CompressionResult:
    """:func:`compress` through the dependency graph even where the model is a chain (kept for callers that
    want the graph's channel groups)."""
    with deterministic_mode(model):
        structure = GraphStructure(model, example_input, config.graph_reduce, config.channel_score)
    return _compress_with(model, val, config, structure, log, device, dense)


def _stored_precisions(small: nn.Module, variances: list, per_weight: list[bool],
                       config: CompressConfig) -> list[LayerPrecision]:
    """Per-layer bits of the shrunk model; for per-weight priors they come from the weights actually stored (the
    non-zero ones)."""
    weights = [m.weight.detach() for m in prunable_modules(small)]
    variances = [v[w != 0] if flag and bool((w != 0).any()) else v for v, w, flag in zip(variances, weights, per_weight)]
    return layer_precisions(variances, weights, config.bits_reduce, config.min_bits)


__all__ = [
    "BUDGET_ORDERS", "CUT_WEIGHTS", "SEARCHES", "CompressConfig", "CompressionResult", "PruneError", "PruningPlan",
    "UnsupportedModelError", "build_chain", "compress", "compress_graph", "masked", "plan_from_thresholds", "propagate",
    "quantize_model", "save_quantized", "shrink",
]
