"""Priors (methods): one module per prior, each registering its layers and config in :data:`PRIORS`."""

from bayescomp.priors import group_nj  # noqa: F401  (registers "gnj")
from bayescomp.priors import sparse_vd  # noqa: F401  (registers "svd")
from bayescomp.priors import group_hs  # noqa: F401  (registers "ghs")
from bayescomp.priors import turbo_vbi  # noqa: F401  (registers "turbo")
from bayescomp.priors.base import (
    PRIORS,
    BayesianLayer,
    PriorSpec,
    bayesian_layers,
    deterministic_mode,
    get_prior,
    register_prior,
    set_deterministic,
)
from bayescomp.priors.group_hs import Conv2dGroupHS, GroupHSConfig, LinearGroupHS
from bayescomp.priors.group_nj import Conv2dGroupNJ, GroupNJConfig, LinearGroupNJ
from bayescomp.priors.sparse_vd import Conv2dSparseVD, LinearSparseVD, SparseVDConfig
from bayescomp.priors.turbo_vbi import Conv2dTurboVBI, LinearTurboVBI, TurboVBIConfig

__all__ = [
    "PRIORS", "BayesianLayer", "PriorSpec", "bayesian_layers", "deterministic_mode", "get_prior",
    "register_prior", "set_deterministic", "Conv2dGroupHS", "GroupHSConfig", "LinearGroupHS", "Conv2dGroupNJ", "GroupNJConfig", "LinearGroupNJ",
    "Conv2dSparseVD", "LinearSparseVD", "SparseVDConfig", "Conv2dTurboVBI", "LinearTurboVBI", "TurboVBIConfig",
]
