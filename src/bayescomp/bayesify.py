"""Turn a plain network into a Bayesian one: every ``nn.Linear``/``nn.Conv2d`` becomes the chosen prior's layer.

The posterior means start from the trained weights (the workflow of the BC reference code, "retraining a regular
neural network"), so Bayesian training refines a good network instead of starting from scratch.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, is_dataclass
from typing import Any

import torch
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


def bayesify(model: nn.Module, prior: str = "gnj", config: Any = None, inplace: bool = False,
             example_input: torch.Tensor | None = None) -> nn.Module:
    """Replace every Linear and Conv2d of ``model`` by the Bayesian layer of ``prior``.

    Args:
        model: a plain network; its weights initialise the posterior means.
        prior: a key of :data:`bayescomp.priors.PRIORS` (e.g. ``"gnj"``).
        config: the prior's config dataclass (or a dict of its fields); defaults when ``None``.
        inplace: modify ``model`` itself instead of a deep copy.
        example_input: optional batch; if given, Linear layers that receive inputs of more than two dimensions
            (tokens, ``[B, T, D]``) are refused here rather than at the first forward.

    Returns the Bayesian model (same structure, same forward signature). Modules with parameters that are
    neither Linear/Conv2d nor a known pass-through layer (e.g. an ``nn.LSTM``) raise a ``TypeError`` naming them,
    because their weights would silently stay deterministic. Subclasses of Linear/Conv2d are converted when they
    behave exactly like their base class (no own ``forward``, no extra parameters) and refused by name otherwise.
    The Bayesian Linear layers take ``[batch, features]`` inputs only (one group scale per input feature and
    example); a higher-rank input raises a ``ValueError`` naming the layer.
    """
    spec = get_prior(prior)
    config = make_config(prior, config)
    if not is_dataclass(config):
        raise TypeError("config must be a dataclass")
    model = model if inplace else copy.deepcopy(model)
    _check_supported(model)
    if example_input is not None:
        _check_linear_input_ranks(model, example_input)
    _swap(model, spec, config)
    for name, module in model.named_modules():
        if isinstance(module, BayesianLayer) and not hasattr(module, "out_channels"):
            module.register_forward_pre_hook(functools.partial(_require_2d_input, name))
    return model


def _convertible(module: nn.Module, base: type[nn.Module]) -> bool:
    """A Linear/Conv2d (sub)class that behaves exactly like ``base``: its forward and parameters are the base's."""
    if type(module) is base:
        return True
    own = {name for name, _ in module.named_parameters(recurse=False)}
    return type(module).forward is base.forward and own <= {"weight", "bias"} and not list(module.children())


def _require_2d_input(name: str, module: nn.Module, args: tuple) -> None:
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() != 2:
        raise ValueError(
            f"Bayesian Linear layer {name!r} got an input of shape {tuple(args[0].shape)}; it takes [batch, "
            "features] only (its group scales are per example and input feature). Flatten the extra dimensions "
            "into the batch (x.reshape(-1, x.shape[-1])) around it, or leave this layer out of bayesify.")


def _check_linear_input_ranks(model: nn.Module, example_input: torch.Tensor) -> None:
    """Run ``example_input`` through the plain model and refuse Linear layers fed more than two dimensions."""
    seen: dict[str, int] = {}
    hooks = [module.register_forward_pre_hook(functools.partial(_record_rank, seen, name))
             for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    wrong = sorted(name for name, rank in seen.items() if rank != 2)
    if wrong:
        raise TypeError(f"Linear layers {wrong} receive inputs with more than two dimensions (e.g. tokens "
                        "[B, T, D]); bayesify supports [batch, features] Linear inputs only. Flatten the extra "
                        "dimensions into the batch around them, or keep them out of the model you compress.")


def _record_rank(seen: dict[str, int], name: str, module: nn.Module, args: tuple) -> None:
    if args and isinstance(args[0], torch.Tensor):
        seen[name] = max(seen.get(name, 0), args[0].dim())


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, BayesianLayer) or isinstance(module, PASS_THROUGH):
            continue
        base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d if isinstance(module, nn.Conv2d) else None
        if base is not None:
            if _convertible(module, base):
                continue
            raise TypeError(
                f"module {name!r} ({type(module).__name__}) subclasses {base.__name__} but changes its forward or "
                "adds parameters/submodules; converting it would silently drop that behaviour and leaving it "
                f"plain would leave it deterministic and never pruned. Use a plain {base.__name__} there, or keep "
                "it outside the model you compress.")
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
        if isinstance(child, nn.Linear) and _convertible(child, nn.Linear):
            setattr(module, child_name, spec.from_linear(child, config))
        elif isinstance(child, nn.Conv2d) and _convertible(child, nn.Conv2d):
            setattr(module, child_name, spec.from_conv2d(child, config))
        else:
            _swap(child, spec, config)
