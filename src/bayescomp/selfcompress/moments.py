"""Gaussian moments that flow through the density-propagating layers, and the full-covariance memory guard.

Variational density propagation (Dera, Rasool, Bouaynaya, MLSP 2019; used for self-compression by
Carannante, Dera, Rasool, Bouaynaya, "Self-Compression in Bayesian Neural Networks", MLSP 2020) pushes a
Gaussian (mean, covariance) through each layer instead of sampling weights. :class:`Moments` carries it in
one of two modes:

* ``"diag"``: only the variances, same shape as the mean (cheap, drops all correlations);
* ``"full"``: for feature maps ``(N, C, H, W)`` one ``P x P`` covariance per channel, ``P = H * W``
  (channels independent, block-diagonal, as in the authors' code), shaped ``(N, C, P, P)``; for vectors
  ``(N, D)`` a dense ``(N, D, D)`` covariance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("diag", "full")
MAX_FULL_COV_BYTES: int = 2 * 1024**3
"""Default ceiling (bytes) for one full-mode allocation; override per layer or by BAYESCOMP_MAX_COV_BYTES."""
ENV_MAX_COV_BYTES = "BAYESCOMP_MAX_COV_BYTES"


class CovarianceTooLargeError(ValueError):
    """A full-mode covariance would need more memory than the configured ceiling."""


def resolve_max_cov_bytes(limit: int | None = None) -> int:
    """The ceiling in force: the explicit ``limit``, else the env var, else :data:`MAX_FULL_COV_BYTES`."""
    if limit is not None:
        return int(limit)
    env = os.environ.get(ENV_MAX_COV_BYTES)
    if env:
        try:
            return int(float(env))
        except ValueError as err:
            raise ValueError(f"{ENV_MAX_COV_BYTES}={env!r} is not a number of bytes") from err
    return MAX_FULL_COV_BYTES


def check_cov_size(layer: str, shape: Sequence[int], dtype: torch.dtype, limit: int | None = None) -> None:
    """Raise :class:`CovarianceTooLargeError` *before* allocating a tensor of ``shape`` if it is too big.

    Full-mode covariances grow with the square of the number of positions/features, so a careless batch can
    ask for tens of gigabytes; failing early with a clear message is kinder than an out-of-memory kill.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = math.prod(int(s) for s in shape) * itemsize
    ceiling = resolve_max_cov_bytes(limit)
    if need > ceiling:
        raise CovarianceTooLargeError(
            f"{layer}: a full-mode tensor of shape {tuple(int(s) for s in shape)} would need {need:,} bytes "
            f"({need / 1024**3:.2f} GiB), above the limit of {ceiling:,} bytes. Use mode=\"diag\" or a "
            f"smaller batch (or raise max_full_cov_bytes / {ENV_MAX_COV_BYTES}).")


@dataclass
class Moments:
    """Mean and (diagonal or full) covariance of a Gaussian activation; exactly one of var/cov is set."""

    mean: Tensor
    var: Tensor | None = None
    cov: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.var is None) == (self.cov is None):
            raise ValueError("Moments needs exactly one of var (diag mode) or cov (full mode)")
        if self.mean.dim() not in (2, 4):
            raise ValueError(f"mean must be (N, D) or (N, C, H, W), got shape {tuple(self.mean.shape)}")
        if self.var is not None and self.var.shape != self.mean.shape:
            raise ValueError(f"var shape {tuple(self.var.shape)} != mean shape {tuple(self.mean.shape)}")
        if self.cov is not None and tuple(self.cov.shape) != self.full_cov_shape(self.mean.shape):
            raise ValueError(f"cov shape {tuple(self.cov.shape)} does not fit mean shape "
                             f"{tuple(self.mean.shape)}; expected {self.full_cov_shape(self.mean.shape)}")

    @staticmethod
    def full_cov_shape(mean_shape: Sequence[int]) -> tuple[int, ...]:
        """``(N, C, P, P)`` for a map ``(N, C, H, W)``, ``(N, D, D)`` for a vector ``(N, D)``."""
        if len(mean_shape) == 4:
            n, c, h, w = (int(s) for s in mean_shape)
            return (n, c, h * w, h * w)
        n, d = (int(s) for s in mean_shape)
        return (n, d, d)

    @property
    def mode(self) -> str:
        """``"full"`` if a covariance is carried, else ``"diag"``."""
        return "full" if self.cov is not None else "diag"

    @property
    def is_map(self) -> bool:
        """True for ``(N, C, H, W)`` feature maps, False for ``(N, D)`` vectors."""
        return self.mean.dim() == 4

    def diagonal(self) -> Tensor:
        """The variances, in the mean's shape, whichever the mode."""
        if self.var is not None:
            return self.var
        assert self.cov is not None
        return torch.diagonal(self.cov, dim1=-2, dim2=-1).reshape(self.mean.shape)

    @classmethod
    def deterministic(cls, x: Tensor, mode: str = "diag", max_full_cov_bytes: int | None = None) -> Moments:
        """A point mass at ``x``: zero variance (diag) or zero covariance (full)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "diag":
            return cls(mean=x, var=torch.zeros_like(x))
        shape = cls.full_cov_shape(x.shape)
        check_cov_size("Moments.deterministic", shape, x.dtype, max_full_cov_bytes)
        return cls(mean=x, cov=x.new_zeros(shape))
