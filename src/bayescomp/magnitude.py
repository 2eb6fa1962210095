"""Magnitude pruning: the non-Bayesian baseline every table is compared against.

Han et al. (2015), "Learning both weights and connections for efficient neural networks", remove the
weights of smallest magnitude from a trained network and fine-tune the rest, iterating prune -> retrain
because one-shot pruning to high sparsity loses more accuracy. We spread the pruning over ``rounds`` steps
with the cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune": round r of R prunes to
s_r = s * (1 - (1 - r/R)^3), large steps first while the network is still redundant, small ones near the
end. Fine-tuning between rounds keeps the masked weights exactly zero: ``torch.nn.utils.prune``
reparameterises ``weight = weight_orig * weight_mask``, so pruned entries get no gradient and are zero in
every forward pass. At the end the masks are made permanent and the model is a plain ``nn.Sequential`` again.

Why it is here: the Bayesian methods must beat a well-tuned deterministic baseline that uses the same data,
architectures, fine-tuning budget and compression path (:func:`magnitude_compress` ends in the same
:class:`~bayescomp.compress.CompressionResult` as :func:`bayescomp.compress.compress`).

Two flavours:

* unstructured (``structured=False``): single weights by |w|. High sparsity, but the dense architecture
  only shrinks where whole groups happen to empty, so the gain shows in the non-zero count
  (:func:`nonzero_weights`), not in the kept architecture.
* structured (``structured=True``): whole groups by the L2 norm of their weights, with the groups of
  :mod:`bayescomp.compress.masks` (input features of Linear layers, output filters of Conv2d layers), so
  the network physically shrinks, as for the group priors of Louizos et al. (2017).

``scope="global"`` ranks all layers together (unstructured: one |w| threshold, as
``torch.nn.utils.prune.global_unstructured``; structured: group norm / sqrt(group size), so layers of
different fan-in compare fairly); ``scope="layer"`` removes the same fraction from every layer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from bayescomp.compress import CompressionResult, prunable_modules
from bayescomp.compress.chain import build_chain
from bayescomp.compress.masks import PruningPlan, full_architecture, propagate
from bayescomp.compress.precision import LayerPrecision
from bayescomp.compress.shrink import shrink
from bayescomp.data import DataBundle
from bayescomp.priors.base import BayesianLayer
from bayescomp.train import TrainConfig, fit

SCOPES = ("global", "layer")


@dataclass
class MagnitudeConfig:
    """Options of the magnitude-pruning baseline (saved with the run).

    Args:
        sparsity: unstructured: fraction of all prunable weights removed; structured: fraction of groups
            removed (of all groups with ``scope="global"``, of every layer's groups with ``scope="layer"``).
        structured: remove whole groups (Linear input features, Conv2d output filters) by their L2 norm
            instead of single weights by |w|.
        scope: ``"global"`` (one ranking over all layers) or ``"layer"`` (the same fraction in every layer).
        rounds: prune -> fine-tune rounds along the cubic schedule of Zhu & Gupta (2017).
        keep_min: never leave fewer than this many weights (groups, if structured) in a layer, so that global
            pruning cannot disconnect the network.
        name: the method's name in tables and run folders.
    """

    sparsity: float = 0.9
    structured: bool = False
    scope: str = "global"
    rounds: int = 4
    keep_min: int = 1
    name: str = "magnitude"

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if int(self.rounds) != self.rounds or self.rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {self.rounds!r}")
        if int(self.keep_min) != self.keep_min or self.keep_min < 0:
            raise ValueError(f"keep_min must be a non-negative integer, got {self.keep_min!r}")


def _check_sparsity(sparsity: float) -> None:
    # `not 0 <= s < 1` also rejects NaN; sparsity 1 would remove every weight, leaving no network.
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of weights or groups removed), "
                         f"got {sparsity!r}")


def schedule(config: MagnitudeConfig, r: int) -> float:
    """Target sparsity after round ``r`` (1-based) of Zhu & Gupta's (2017) cubic schedule; r=R: the target."""
    return config.sparsity * (1.0 - (1.0 - r / config.rounds) ** 3)


def nonzero_weights(model: nn.Module) -> int:
    """Non-zero Linear/Conv2d weight entries (biases excluded): the size of an unstructured-sparse model."""
    return int(sum(int((m.weight.detach() != 0).sum()) for m in _plain_layers(model)))


def _plain_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/Conv2d layers in registration (= chain) order; Bayesian layers are not this baseline's."""
    if any(isinstance(m, BayesianLayer) for m in model.modules()):
        raise TypeError("magnitude pruning works on plain models; this one has Bayesian layers "
                        "(use bayescomp.compress.compress)")
    layers = prunable_modules(model)
    if not layers:
        raise ValueError("the model has no Linear or Conv2d layer to prune")
    return layers


def _groups(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as (groups x group size): Linear columns, Conv2d filters (the groups of masks.py)."""
    return weight.t() if isinstance(module, nn.Linear) else weight.flatten(1)


def _expand(module: nn.Module, keep: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-group keep vector -> keep mask of the weight's shape."""
    if isinstance(module, nn.Linear):
        return keep.view(1, -1).expand_as(weight).clone()
    return keep.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries of a 1-D score vector."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(scores, min(k, scores.numel())).indices] = True
    return keep


def _select(scores: list[torch.Tensor], sparsity: float, scope: str, keep_min: int) -> list[torch.Tensor]:
    """Keep masks over units (weights or groups), removing ``round(sparsity * n)`` of the lowest scores.

    Every layer first reserves its ``keep_min`` best units; with ``scope="global"`` the rest of the budget
    goes to the best remaining units of all layers. When the reserved units are among the global top k
    anyway (the usual case) this is exactly the global top k, i.e. ``global_unstructured``; it keeps more
    than k only if the reserves alone exceed k. ``round`` as in ``torch.nn.utils.prune``.
    """
    if scope == "layer":
        out = []
        for s in scores:
            n = s.numel()
            out.append(_top(s, max(min(keep_min, n), n - int(round(sparsity * n)))))
        return out
    reserved = [_top(s, min(keep_min, s.numel())) for s in scores]
    flat = torch.cat([torch.where(r, torch.full_like(s, math.inf), s) for s, r in zip(scores, reserved)])
    n_keep = max(flat.numel() - int(round(sparsity * flat.numel())), sum(int(r.sum()) for r in reserved))
    return list(torch.split(_top(flat, n_keep), [s.numel() for s in scores]))


@torch.no_grad()
def magnitude_masks(model: nn.Module, config: MagnitudeConfig, sparsity: float,
                    previous: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Bool keep masks (one per Linear/Conv2d weight, chain order) at ``sparsity`` under ``config``'s rules.

    Args:
        previous: masks of an earlier round; what they removed ranks below every live unit and stays
            removed (Han et al. never regrow connections), so a rising schedule removes exactly the target
            count.
    The network's output units are never removed: with structured pruning a final Conv2d layer's filters
    (its outputs) are not candidates. The masks live on the CPU.
    """
    _check_sparsity(sparsity)
    layers = _plain_layers(model)
    weights = [m.weight.detach().cpu() for m in layers]  # under torch prune: weight_orig * weight_mask
    if previous is not None:
        if len(previous) != len(layers):
            raise ValueError(f"expected {len(layers)} previous masks (one per layer), got {len(previous)}")
        previous = [p.detach().bool().cpu() for p in previous]
    if not config.structured:
        scores = [w.abs().double().flatten() for w in weights]
        if previous is not None:
            scores = [s.masked_fill(~p.flatten(), -math.inf) for s, p in zip(scores, previous)]
        keep = _select(scores, sparsity, config.scope, config.keep_min)
        masks = [k.view_as(w) for k, w in zip(keep, weights)]
    else:
        last = len(layers) - 1  # a final conv's groups are the network's outputs: never candidates
        candidates = [i for i, m in enumerate(layers) if not (i == last and isinstance(m, nn.Conv2d))]
        scores = []
        for i in candidates:
            groups = _groups(layers[i], weights[i].double())
            score = groups.norm(dim=1)
            if config.scope == "global":
                score = score / math.sqrt(groups.shape[1])  # RMS: wide and narrow groups compare fairly
            if previous is not None:
                score = score.masked_fill(~_groups(layers[i], previous[i]).any(dim=1), -math.inf)
            scores.append(score)
        keep = dict(zip(candidates, _select(scores, sparsity, config.scope, config.keep_min)))
        masks = [_expand(m, keep[i], w) if i in keep else torch.ones_like(w, dtype=torch.bool)
                 for i, (m, w) in enumerate(zip(layers, weights))]
    if previous is not None:
        masks = [m & p for m, p in zip(masks, previous)]
    return masks


def _apply_masks(layers: list[nn.Module], masks: list[torch.Tensor]) -> None:
    """Reparameterise every layer as ``weight_orig * weight_mask``. A Conv2d filter with no weight left
    loses its bias too: the filter is gone, as it will be in the compressed model."""
    for module, mask in zip(layers, masks):
        mask = mask.to(module.weight.device)
        prune.custom_from_mask(module, "weight", mask)
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            alive = mask.flatten(1).any(dim=1)
            if not bool(alive.all()):
                prune.custom_from_mask(module, "bias", alive)


def _make_permanent(layers: list[nn.Module]) -> None:
    """Undo torch prune's reparameterisation: plain parameters, zeros in place, no hooks or buffers."""
    for module in layers:
        removed = False
        for name in ("weight", "bias"):
            if hasattr(module, f"{name}_orig"):
                prune.remove(module, name)
                removed = True
        if removed:  # prune.remove re-registers at the end; restore the usual weight-then-bias order
            order = [n for n in ("weight", "bias") if n in module._parameters]
            order += [n for n in module._parameters if n not in ("weight", "bias")]
            for name in order:
                module._parameters[name] = module._parameters.pop(name)


def prune_and_finetune(model: nn.Sequential, data: DataBundle, config: MagnitudeConfig,
                       finetune: TrainConfig, log: Callable[[str], None] = print,
                       progress: bool = False, teacher: nn.Module | None = None) -> list[torch.Tensor]:
    """Gradual magnitude pruning of ``model`` in place (Han et al. 2015; Zhu & Gupta 2017).

    Round r prunes the current weights to s_r and fine-tunes ``finetune.epochs // rounds`` epochs (the
    remainder in the last round) with seed ``finetune.seed + r``. ``fit`` optimises ``weight_orig``; the
    mask multiplies it in every forward pass, so pruned weights are zero throughout fine-tuning. Whatever
    happens, the model leaves as plain Linear/Conv2d layers (zeros in place, no prune hooks or buffers).
    With ``finetune.distill > 0`` every round distils from ``teacher`` (the unpruned model; :mod:`bayescomp.distill`).
    Returns the final keep masks.
    """
    layers = _plain_layers(model)
    per_round, remainder = divmod(finetune.epochs, config.rounds)
    masks: list[torch.Tensor] | None = None
    try:
        for r in range(1, config.rounds + 1):
            _make_permanent(layers)  # exact zeros, so the ranking sees the fine-tuned, masked weights
            target = schedule(config, r)
            masks = magnitude_masks(model, config, target, previous=masks)
            _apply_masks(layers, masks)
            kept = sum(int(m.sum()) for m in masks)
            total = sum(m.numel() for m in masks)
            epochs = per_round + (remainder if r == config.rounds else 0)
            log(f"{config.name} round {r}/{config.rounds}: target sparsity {target:.4f}, weights kept "
                f"{kept}/{total} (sparsity {1 - kept / total:.4f}); fine-tuning {epochs} epochs")
            if epochs > 0:
                fit(model, data, dataclasses.replace(finetune, epochs=epochs, seed=finetune.seed + r),
                    progress=progress, log=log, teacher=teacher if finetune.distill > 0 else None)
    finally:
        _make_permanent(layers)
    return masks


@torch.no_grad()
def magnitude_compress(model: nn.Sequential, masks: Sequence[torch.Tensor]) -> CompressionResult:
    """Shrink a magnitude-pruned model through the Bayesian methods' path; ``model`` is left unchanged.

    The masks are applied to a copy. A group survives iff it keeps a non-zero weight (mask and value), so
    removing it is exact: an all-zero Linear column reads nothing; an all-zero Conv2d filter leaves only its
    bias, which is dropped as in :func:`bayescomp.compress.masks.masked` (``prune_and_finetune`` already
    fine-tunes without it). The group statistic is -log(L2 norm + 1e-12) in float64 (small keeps, as log
    alpha for BC); the per-layer thresholds reproduce the plan. Weights stay float32:
    ``LayerPrecision(23, 8)`` is 32 bits.
    """
    pruned = copy.deepcopy(model)
    layers = _plain_layers(pruned)
    _make_permanent(layers)
    if len(masks) != len(layers):
        raise ValueError(f"expected {len(layers)} masks (one per Linear/Conv2d layer), got {len(masks)}")
    for module, mask in zip(layers, masks):
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask of shape {tuple(mask.shape)} for a weight of shape "
                             f"{tuple(module.weight.shape)}")
        module.weight.mul_(mask.to(module.weight.device, module.weight.dtype))
    chain = build_chain(pruned)
    stats, keep = [], []
    for layer in chain.layers:
        norm = _groups(layer.module, layer.module.weight.detach().cpu().double()).norm(dim=1)
        keep.append(norm > 0)
        stats.append(-torch.log(norm + 1e-12))
    plan = propagate(chain, keep)  # raises PruneError if a layer has no group left
    thresholds = [_separating_threshold(s, k) for s, k in zip(stats, keep)]
    small = shrink(chain, plan)
    return CompressionResult(
        model=small,
        quantized_model=copy.deepcopy(small),
        plan=plan,
        thresholds=thresholds,
        layer_names=[layer.name for layer in chain.layers],
        architecture_dense=full_architecture(chain),
        architecture_kept=plan.kept_architecture(chain),
        weights_dense=PruningPlan.keep_all(chain).weights_kept(chain),
        weights_kept=plan.weights_kept(chain),
        precisions=[LayerPrecision(23, 8) for _ in chain.layers],
        log_alpha=stats,
        search_path=[],
        base_val_error_pct=None,
    )


def _separating_threshold(stats: torch.Tensor, keep: torch.Tensor) -> float:
    """A threshold t with ``(stats < t) == keep``: the largest kept statistic + 1e-6, or the midpoint to
    the smallest removed one when they are closer than that."""
    if not bool(keep.any()):
        return float(stats.min())  # keeps nothing (propagate has already refused this case)
    t = float(stats[keep].max()) + 1e-6
    if bool((~keep).any()):
        t = min(t, 0.5 * (float(stats[keep].max()) + float(stats[~keep].min())))
    if not torch.equal(stats < t, keep):
        raise RuntimeError("no threshold separates the kept from the removed groups "
                           "(a kept group has norm ~0)")
    return t


__all__ = ["MagnitudeConfig", "magnitude_compress", "magnitude_masks", "nonzero_weights",
           "prune_and_finetune", "schedule"]
