"""Training objectives for density-propagating (eVI) networks.

Carannante, Dera, Rasool, Bouaynaya, "Self-Compression in Bayesian Neural Networks" (MLSP 2020) train with
the eVI ELBO: the one-hot label is modelled as a Gaussian around the propagated predictive mean with the
propagated predictive covariance, so the network is penalised for confident mistakes and rewarded for
honest uncertainty. The KL to the ``N(0, I)`` prior is what drives unneeded kernel means towards zero, which
is the self-compression effect.

Scaling convention: as in :func:`bayescomp.objective.variational_loss`, the loss is
``mean NLL + kl_scale * KL_sum / n_train`` (the ELBO divided by the data set size), so the data term stays a
per-example mean and the prior strength does not depend on the batch size. The authors' code instead adds
``tau * KL_sum`` with a fixed factor (TF1: ``tau = 0.002``; TF2: ``0.5 * (NLL + 0.01 * KL)``); reproduce that
with ``kl_scale = tau * n_train``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescomp.selfcompress.moments import Moments

CE_FLOOR = 1e-12
"""Added to the predictive probability before the log, so a zero probability gives a large, finite loss."""


def _model_kl(model: nn.Module, like: Tensor) -> Tensor:
    """``model.kl_divergence()`` (an unscaled sum over weights), or 0 for a plain model without one."""
    kl_fn = getattr(model, "kl_divergence", None)
    if kl_fn is None:
        return like.new_zeros(())
    return kl_fn().to(device=like.device, dtype=like.dtype)


def _check_output(output: Moments, labels: Tensor) -> None:
    """The predictive moments must be ``(N, K)`` vectors matching ``labels`` of shape ``(N,)``."""
    if output.is_map:
        raise ValueError(f"the predictive moments must be (N, K) vectors, got {tuple(output.mean.shape)}")
    if labels.dim() != 1 or labels.shape[0] != output.mean.shape[0]:
        raise ValueError(f"labels must have shape ({output.mean.shape[0]},), got {tuple(labels.shape)}")


def gaussian_nll(output: Moments, labels: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean over the batch of ``0.5 [(y - p)^T (S + eps I)^{-1} (y - p) + log det(S + eps I)]`` (no constant).

    The eVI likelihood of Carannante et al. 2020 (Dera et al. 2019): ``y`` one-hot, ``p`` the softmax mean,
    ``S`` the predictive covariance (full mode) or ``diag(var)`` (diag mode). ``eps`` keeps ``S`` invertible
    because the softmax Jacobian makes the propagated covariance singular (its rows sum to zero).
    """
    _check_output(output, labels)
    p = output.mean
    k = p.shape[1]
    r = F.one_hot(labels.long(), k).to(p.dtype) - p
    if output.cov is not None:
        cov = output.cov
        if not torch.isfinite(cov).all():
            raise ValueError("gaussian_nll: the predictive covariance has non-finite entries (NaN/Inf)")
        a = cov + eps * torch.eye(k, dtype=cov.dtype, device=cov.device)
        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info != 0).any()):
            raise ValueError("gaussian_nll: predictive covariance + eps I is not positive definite; "
                             "raise eps or check the propagated covariance")
        maha = (r * torch.cholesky_solve(r.unsqueeze(-1), chol).squeeze(-1)).sum(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    else:
        assert output.var is not None
        if not torch.isfinite(output.var).all():
            raise ValueError("gaussian_nll: the predictive variance has non-finite entries (NaN/Inf)")
        var = output.var + eps
        if bool((var <= 0).any()):
            raise ValueError("gaussian_nll: predictive variance + eps is not positive; raise eps")
        maha = (r.pow(2) / var).sum(-1)
        logdet = torch.log(var).sum(-1)
    return 0.5 * (maha + logdet).mean()


def gaussian_elbo_loss(output: Moments, labels: Tensor, model: nn.Module, n_train: int, kl_scale: float = 1.0,
                       eps: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's eVI loss: ``(loss, nll, kl)`` with loss = Gaussian NLL + kl_scale * KL_sum / n_train.

    ``kl`` is the unscaled sum ``model.kl_divergence()`` (0 for a plain model), as in
    :func:`bayescomp.objective.variational_loss`; raises ValueError on a non-finite or indefinite covariance.
    """
    if n_train <= 0:
        raise ValueError(f"n_train must be positive, got {n_train}")
    nll = gaussian_nll(output, labels, eps)
    kl = _model_kl(model, nll)
    return nll + kl_scale * kl / float(n_train), nll, kl


def cross_entropy_loss(output: Moments, labels: Tensor, model: nn.Module, n_train: int, kl_scale: float = 1.0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Comparison objective: mean ``-log(p_label + 1e-12)`` on the predictive mean probabilities, same KL.

    Ignores the propagated covariance, so it isolates the effect of the Gaussian likelihood of
    Carannante et al. 2020. ``output.mean`` must already be probabilities (a softmax as last layer).
    """
    if n_train <= 0:
        raise ValueError(f"n_train must be positive, got {n_train}")
    _check_output(output, labels)
    p_label = output.mean.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    nll = -torch.log(p_label + CE_FLOOR).mean()
    kl = _model_kl(model, nll)
    return nll + kl_scale * kl / float(n_train), nll, kl
