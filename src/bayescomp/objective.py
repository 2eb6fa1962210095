"""The variational objective: NLL + KL / N_train, with an optional linear KL warm-up.

Every Bayesian layer returns its KL as a *sum* over its weights and groups; :func:`collect_kl` adds them up, and
the loss divides that sum once by the number of training examples N. This is the ELBO divided by N (the scale of
the BC reference code: ``cross_entropy + kl / 60000``), so the data term stays a per-example mean. Averaging the KL
per layer or per weight instead would change the prior's strength with the layer count (a known bug elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bayescomp.priors.base import bayesian_layers


def collect_kl(model: nn.Module, device: torch.device | str | None = None) -> torch.Tensor:
    """Sum of the KL divergences of all Bayesian layers (0 for a plain model, made on ``device``: a CUDA graph
    cannot copy a CPU zero in)."""
    terms = [layer.kl_divergence() for _, layer in bayesian_layers(model)]
    if not terms:
        return torch.zeros((), device=device)
    return torch.stack(terms).sum()


def kl_weight(epoch: float, warmup_epochs: float) -> float:
    """Linear warm-up of the KL term from 0 to 1 over ``warmup_epochs`` (1 throughout when 0)."""
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / warmup_epochs)))


def variational_loss(
    logits: torch.Tensor, targets: torch.Tensor, model: nn.Module, n_train: int, kl_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(loss, nll, kl)`` with loss = mean NLL + kl_scale * KL_sum / n_train."""
    nll = F.cross_entropy(logits, targets)
    kl = collect_kl(model, nll.device).to(nll.device)
    return nll + kl_scale * kl / float(n_train), nll, kl
