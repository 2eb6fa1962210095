"""The per-step and per-epoch hooks for training loops of your own (issue 15, item 7).

:func:`bayescomp.fit` calls every Bayesian layer's ``apply_constraints()`` after each optimiser step (variance
clipping of BC-GNJ/GHS, Louizos et al. 2017, sec. 3.2) and ``on_epoch_end()`` after each epoch. For Turbo-VBI
(Liu et al. 2023) these calls *are* the algorithm: the support / precision updates (module B and the rho-, s-steps)
run inside them, and a loop without them trains the weights under a fixed prior and prunes nothing. A loop of
your own does the same with::

    loss = F.cross_entropy(model(x), y) + bayescomp.kl_loss(model) / len(train_set)
    loss.backward(); optimizer.step()
    bayescomp.after_step(model)
    ...                             # at the end of each epoch:
    bayescomp.after_epoch(model)
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bayescomp.priors.base import bayesian_layers


def kl_loss(model: nn.Module) -> torch.Tensor:
    """The sum of every Bayesian layer's KL divergence: the KL term the trainer uses.

    It is a *sum* over weights and groups (not a mean). The trainer's loss is ``mean NLL + kl_loss(model) / N``
    with N the number of training examples: the negative ELBO divided by N, so the data term stays a
    per-example mean and the prior's strength does not depend on the batch size or the layer count.
    """
    from bayescomp.objective import collect_kl

    return collect_kl(model)


def after_step(model: nn.Module) -> None:
    """Call right after ``optimizer.step()``: every Bayesian layer's ``apply_constraints()``."""
    for _, layer in bayesian_layers(model):
        layer.apply_constraints()


def after_epoch(model: nn.Module) -> None:
    """Call once at the end of each epoch: every Bayesian layer's ``on_epoch_end()``."""
    for _, layer in bayesian_layers(model):
        layer.on_epoch_end()
        layer._epoch_hook_calls = getattr(layer, "_epoch_hook_calls", 0) + 1


def never_updated_turbo_layers(model: nn.Module) -> list[str]:
    """Names of Turbo-VBI layers that never saw a step hook nor a Turbo iteration (their support is the prior's).

    ``steps`` (a checkpointed buffer) counts ``apply_constraints`` calls (the trainer's and :func:`after_step`'s);
    :func:`after_epoch` marks the layers it visited (an epoch-end-only schedule, ``update_every=0``, updates the
    support without counting steps).
    """
    out = []
    for name, layer in bayesian_layers(model):
        if not hasattr(layer, "turbo_update"):
            continue
        steps = getattr(layer, "steps", None)
        if (steps is None or int(steps) == 0) and not getattr(layer, "_epoch_hook_calls", 0):
            out.append(name or type(layer).__name__)
    return out


def warn_if_turbo_never_updated(model: nn.Module) -> None:
    """Warn loudly before compressing a Turbo-VBI model trained without :func:`after_step` / :func:`after_epoch`."""
    stale = never_updated_turbo_layers(model)
    if stale:
        warnings.warn(
            f"Turbo-VBI layers {stale} were never updated: their support is still the prior's, so compression "
            "will prune (almost) nothing. A training loop of your own must call bayescomp.after_step(model) after "
            "every optimizer.step() and bayescomp.after_epoch(model) after every epoch (bayescomp.fit does).",
            UserWarning, stacklevel=3)
