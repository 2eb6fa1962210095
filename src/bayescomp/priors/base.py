"""The small interface every Bayesian layer implements, and the registry of priors.

A prior (method) differs from another only in its layers, its KL and the statistic that says which groups it can
do without; everything else in the pipeline (training, masks, shrinking, bits, packing, reports) goes through
this interface. Contracts:

* ``forward`` returns only the output (drop-in for ``nn.Linear`` / ``nn.Conv2d``); noise is drawn fresh in every
  call and never stored in registered buffers.
* ``kl_divergence()`` is a **sum** over all the layer's weights and groups; the objective divides the sum over
  layers by the number of training examples (see :mod:`bayescomp.objective`).
* ``deterministic = True`` switches to the posterior-mean network used for evaluation and compression.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn


class BayesianLayer(nn.Module):
    """Base class of Bayesian Linear/Conv2d layers with one scale per group.

    ``group_dim`` says where the groups sit: ``"in"`` (one group per input feature of a Linear layer) or
    ``"out"`` (one group per output filter of a Conv2d layer), following Louizos et al. (2017), Sec. 3.
    """

    group_dim: Literal["in", "out"]
    deterministic: bool = False

    def kl_divergence(self) -> torch.Tensor:
        """KL(q || p) summed over the layer's parameters (a scalar)."""
        raise NotImplementedError

    def group_log_alpha(self) -> torch.Tensor:
        """Pruning statistic per group: small means keep, large means the group carries only noise."""
        raise NotImplementedError

    def posterior_mean_weight(self) -> torch.Tensor:
        """Weight of the deterministic (posterior-mean) layer, shaped like ``nn.Linear``/``nn.Conv2d`` weights."""
        raise NotImplementedError

    def posterior_mean_bias(self) -> torch.Tensor | None:
        """Bias of the deterministic layer (``None`` when the layer has no bias)."""
        raise NotImplementedError

    def posterior_weight_variance(self) -> torch.Tensor:
        """Marginal posterior variance of every weight (same shape as the weight), for bit precision."""
        raise NotImplementedError

    def weight_keep_mask(self) -> torch.Tensor | None:
        """Per-weight keep mask (bool, shaped like the weight) for priors that prune single weights (Sparse VD).

        Group priors return ``None``: they prune whole groups only. Where a mask exists, the posterior-mean
        weight already holds zeros at the pruned positions, and compression stores the layer sparsely.
        """
        return None

    def apply_constraints(self) -> None:
        """Called after each optimiser step (e.g. variance clipping). Default: nothing."""

    def to_plain(self) -> nn.Module:
        """The deterministic layer as a plain ``nn.Linear``/``nn.Conv2d`` with the posterior-mean weights."""
        raise NotImplementedError

    @property
    def num_groups(self) -> int:
        return int(self.group_log_alpha().numel())


@dataclass(frozen=True)
class PriorSpec:
    """A registered prior: its config dataclass and the factories that turn plain layers into Bayesian ones."""

    name: str
    config_cls: type
    from_linear: Callable[[nn.Linear, Any], BayesianLayer]
    from_conv2d: Callable[[nn.Conv2d, Any], BayesianLayer]
    description: str


PRIORS: dict[str, PriorSpec] = {}


def register_prior(spec: PriorSpec) -> PriorSpec:
    PRIORS[spec.name] = spec
    return spec


def get_prior(name: str) -> PriorSpec:
    if name not in PRIORS:
        raise ValueError(f"unknown method/prior {name!r}; known: {', '.join(sorted(PRIORS))}")
    return PRIORS[name]


def bayesian_layers(model: nn.Module) -> Iterator[tuple[str, BayesianLayer]]:
    """All Bayesian layers of a model with their qualified names, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, BayesianLayer):
            yield name, module


def set_deterministic(model: nn.Module, value: bool = True) -> None:
    for _, layer in bayesian_layers(model):
        layer.deterministic = value


class deterministic_mode:  # noqa: N801 (used as a context manager)
    """Context manager: posterior-mean forward and ``eval()`` inside, previous state restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.training = self.model.training
        self.previous = {name: layer.deterministic for name, layer in bayesian_layers(self.model)}
        self.model.eval()
        set_deterministic(self.model, True)
        return self.model

    def __exit__(self, *exc: object) -> None:
        for name, layer in bayesian_layers(self.model):
            layer.deterministic = self.previous.get(name, False)
        self.model.train(self.training)
