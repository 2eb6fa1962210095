"""What the posterior keeps, as bits that can be compared cheaply: the ranks of a data-parallel run must agree.

Each rank reads its masks from its own posterior with the thresholds rank 0 found; a digest of them is all-gathered
(:func:`bayescomp.distributed.all_equal`) so that a run whose ranks drifted apart fails instead of shipping a model
that only one rank believes in.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from bayescomp.compress.chain import UnsupportedModelError, build_chain
from bayescomp.compress.graph import DependencyGraph
from bayescomp.compress import plan_from_thresholds
from bayescomp.priors.base import bayesian_layers, deterministic_mode


def keep_masks(model: nn.Module, thresholds: list[float] | float, example_input: torch.Tensor | None = None,
               reduce: str = "min", channel_score: str = "log_alpha") -> list[torch.Tensor]:
    """The keep-masks the posterior gives with ``thresholds``: group masks (chain: the propagated plan's input
    and output masks; other networks, and any with ``channel_score="snr"``: the coupled channel groups', ranked
    as :class:`~bayescomp.compress.CompressConfig` ranks them) and the per-weight masks of per-weight priors.
    """
    with deterministic_mode(model):
        masks = _chain_masks(model, thresholds) if channel_score == "log_alpha" else None
        if masks is None:
            if example_input is None:
                raise UnsupportedModelError(f"{type(model).__name__} is read through its dependency graph here "
                                            "(not a chain, or channel_score='snr'): pass example_input")
            graph = DependencyGraph(model, example_input, reduce, channel_score)
            count = len(graph.prunable_groups)
            values = thresholds if isinstance(thresholds, (list, tuple)) else [float(thresholds)] * count
            masks = graph.keep_from_thresholds([float(t) for t in values])
        for _, layer in bayesian_layers(model):
            weight_mask = layer.weight_keep_mask()
            if weight_mask is not None:
                masks.append(weight_mask)
    return [m.detach().cpu().bool() for m in masks]


def _chain_masks(model: nn.Module, thresholds: list[float] | float) -> list[torch.Tensor] | None:
    """A chain's propagated input and output masks; ``None`` for a network that is not a chain."""
    try:
        chain = build_chain(model)
    except UnsupportedModelError:
        return None
    plan, _ = plan_from_thresholds(chain, thresholds)
    return [*plan.in_keep, *plan.out_keep]


def mask_digest(model: nn.Module, thresholds: list[float] | float, example_input: torch.Tensor | None = None,
                reduce: str = "min", channel_score: str = "log_alpha") -> str:
    """SHA-256 of :func:`keep_masks` (shapes and bits), cheap to compare across ranks."""
    digest = hashlib.sha256()
    for mask in keep_masks(model, thresholds, example_input, reduce, channel_score):
        digest.update(repr(tuple(mask.shape)).encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()
