"""Priors (methods): one module per prior, each registering its layers and config in :data:`PRIORS`."""

from bayescomp.priors import group_nj  # noqa: F401  (registers "gnj")
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
from bayescomp.priors.group_nj import Conv2dGroupNJ, GroupNJConfig, LinearGroupNJ

__all__ = [
    "PRIORS", "BayesianLayer", "PriorSpec", "bayesian_layers", "deterministic_mode", "get_prior",
    "register_prior", "set_deterministic", "Conv2dGroupNJ", "GroupNJConfig", "LinearGroupNJ",
]
