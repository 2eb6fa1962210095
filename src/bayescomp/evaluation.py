"""Evaluation of a model on a split: test error and negative log-likelihood of the deterministic forward.

Kept apart from training (:mod:`bayescomp.train`) because compression's threshold search evaluates candidates too
and must not depend on the trainer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from bayescomp.data_sources import Split
from bayescomp.priors.base import deterministic_mode


def _logits(outputs: Any) -> torch.Tensor:
    """Logits of a model's output; density-propagating models return moments whose mean is the predictive
    probability vector, whose log serves as logits (log-softmax leaves it unchanged)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return torch.log(outputs.mean.clamp_min(1e-12))


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 1000) -> dict[str, float]:
    """Test error (%) and mean NLL of the deterministic (posterior-mean) model."""
    errors, nll, count = 0, 0.0, 0
    device = device_of(model)
    with deterministic_mode(model):
        for images, labels in data.batches(batch_size, device=None if device.type == "cpu" else device):
            logits = _logits(model(images))
            nll += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            errors += (logits.argmax(1) != labels).sum().item()
            count += labels.numel()
    return {"error_pct": 100.0 * errors / max(count, 1), "nll": nll / max(count, 1)}


@contextmanager
def placed(model: nn.Module, device: str | torch.device | None) -> Iterator[nn.Module]:
    """Inside the block the model (the same object: its modules, parameters and hooks stay valid) sits on
    ``device``; afterwards it is back where it was. ``None``: left where it is. Moving a LeNet costs a millisecond,
    against seconds for one CPU evaluation of a convolutional net, so a search can evaluate on an accelerator while
    everything else stays on the CPU."""
    home = device_of(model)
    target = home if device is None else torch.device(device)
    if target == home:
        yield model
        return
    model.to(target)
    try:
        yield model
    finally:
        model.to(home)


def device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device
