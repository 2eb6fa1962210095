"""Variational density propagation layers for self-compressing Bayesian CNNs.

After Carannante, Dera, Rasool, Bouaynaya, "Self-Compression in Bayesian Neural Networks", MLSP 2020, and
the variational density propagation (eVI) framework of Dera, Rasool, Bouaynaya, MLSP 2019: layers push a
Gaussian (mean, covariance) through the network instead of sampling weights.
"""

from __future__ import annotations

from bayescomp.selfcompress.layers import (
    DensityActivation,
    DensityConv2d,
    DensityFlatten,
    DensityLinear,
    DensityMaxPool2d,
    DensityModule,
    DensityNormalize,
    DensityReLU,
    DensitySequential,
    DensitySigmoid,
    DensitySoftmax,
    DensityTanh,
    density_from_plain,
)
from bayescomp.selfcompress.moments import (
    MAX_FULL_COV_BYTES,
    CovarianceTooLargeError,
    Moments,
    check_cov_size,
    resolve_max_cov_bytes,
)

__all__ = [
    "MAX_FULL_COV_BYTES",
    "CovarianceTooLargeError",
    "DensityActivation",
    "DensityConv2d",
    "DensityFlatten",
    "DensityLinear",
    "DensityMaxPool2d",
    "DensityModule", "DensityNormalize",
    "DensityReLU",
    "DensitySequential",
    "DensitySigmoid",
    "DensitySoftmax",
    "DensityTanh",
    "Moments",
    "check_cov_size",
    "density_from_plain",
    "resolve_max_cov_bytes",
]
