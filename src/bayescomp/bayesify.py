"""Turn a plain network into a Bayesian one: every ``nn.Linear``/``nn.Conv2d`` becomes the chosen prior's layer.

The posterior means start from the trained weights (the workflow of the BC reference code, "retraining a regular
neural network"), so Bayesian training refines a good network instead of starting from scratch.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, is_dataclass
from typing import Any

from torch import nn

from bayescomp.priors import get_prior
from bayescomp.priors.base import BayesianLayer
from bayescomp.validate import check_config_values

#: Layers that carry no weights of their own and can sit between prunable layers.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Identity, nn.Dropout, nn.Flatten,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d,
)


def make_config(prior: str, config: Any = None, **overrides: Any) -> Any:
    """The prior's config dataclass: ``config`` itself, a dict of fields, or the defaults, with ``overrides``."""
    spec = get_prior(prior)
    if isinstance(config, dict):
        check_config_values(spec.config_cls, config, "option")
    check_config_values(spec.config_cls, overrides, "option")
    if config is None:
        config = spec.config_cls()
    elif isinstance(config, dict):
        config = spec.config_cls(**config)
    elif not isinstance(config, spec.config_cls):
        raise TypeError(f"config for prior {prior!r} must be {spec.config_cls.__name__}, got {type(config).__name__}")
    if overrides:
        config = spec.config_cls(**{**asdict(config), **overrides})
    return config


def bayesify(model: nn.Module, prior: str = "gnj", config: Any = None, inplace: bool = False) -> nn.Module:
    """Replace every Linear and Conv2d of ``model`` by the Bayesian layer of ``prior``.

    Args:
        model: a plain network; its weights initialise the posterior means.
        prior: a key of :data:`bayescomp.priors.PRIORS` (e.g. ``"gnj"``).
        config: the prior's config dataclass (or a dict of its fields); defaults when ``None``.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns the Bayesian model (same structure, same forward signature). Modules with parameters that are
    neither Linear/Conv2d nor a known pass-through layer (e.g. an ``nn.LSTM``) raise a ``TypeError`` naming them,
    because their weights would silently stay deterministic.
    """
    spec = get_prior(prior)
    config = make_config(prior, config)
    if not is_dataclass(config):
        raise TypeError("config must be a dataclass")
    model = model if inplace else copy.deepcopy(model)
    _check_supported(model)
    _swap(model, spec, config)
    return model


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, BayesianLayer)) or isinstance(module, PASS_THROUGH):
            continue
        own_params = list(module.parameters(recurse=False))
        if own_params:
            raise TypeError(
                f"module {name!r} ({type(module).__name__}) has parameters but no Bayesian counterpart; supported "
                f"weight layers are nn.Linear and nn.Conv2d (and {', '.join(t.__name__ for t in PASS_THROUGH)} "
                "as pass-through). Replace it or keep it outside the model you compress."
            )


def _swap(module: nn.Module, spec, config) -> None:
    for child_name, child in module.named_children():
        if isinstance(child, BayesianLayer):
            continue
        if type(child) is nn.Linear:
            setattr(module, child_name, spec.from_linear(child, config))
        elif type(child) is nn.Conv2d:
            setattr(module, child_name, spec.from_conv2d(child, config))
        else:
            _swap(child, spec, config)
