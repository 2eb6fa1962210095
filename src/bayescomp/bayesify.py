"""Turn a plain network into a Bayesian one: every ``nn.Linear``/``nn.Conv2d`` becomes the chosen prior's layer.

The posterior means start from the trained weights (the workflow of the BC reference code, "retraining a regular
neural network"), so Bayesian training refines a good network instead of starting from scratch. Which layers
become Bayesian is the user's choice (``filter_fn``, ``skip``: torchao's ``filter_fn`` and Torch-Pruning's
``ignored_layers``); every other weighted module must be one we know to keep plain, so that none stays
deterministic by accident.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
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

#: Weighted layers of transformer blocks that stay plain (deterministic, trained as usual, no KL): none of the
#: priors defines them. ``nn.MultiheadAttention`` is kept whole: its forward reads ``out_proj.weight`` directly,
#: so its inner Linear cannot be swapped.
KEPT_PLAIN: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.Embedding, nn.MultiheadAttention)

#: ``filter_fn(module, qualified_name) -> bool``: whether a Linear/Conv2d becomes Bayesian.
FilterFn = Callable[[nn.Module, str], bool]


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


def bayesify(model: nn.Module, prior: str = "gnj", config: Any = None, inplace: bool = False, *,
             filter_fn: FilterFn | None = None, skip: Iterable[str] = ()) -> nn.Module:
    """Replace the Linear and Conv2d layers of ``model`` by the Bayesian layers of ``prior``.

    Args:
        model: a plain network; its weights initialise the posterior means.
        prior: a key of :data:`bayescomp.priors.PRIORS` (e.g. ``"gnj"``).
        config: the prior's config dataclass (or a dict of its fields); defaults when ``None``.
        inplace: modify ``model`` itself instead of a deep copy (a bare Linear/Conv2d model is always replaced).
        filter_fn: ``filter_fn(module, qualified_name) -> bool`` for every Linear/Conv2d: ``False`` keeps it a
            plain, deterministic layer (trained as usual, no KL). ``None``: all become Bayesian.
        skip: qualified module names left untouched entirely, with everything below them (``"blocks.0"`` skips
            ``"blocks.0.mlp.fc1"``); any module type may be skipped. Qualified names of a module's own bare
            parameters (a ViT's ``"cls_token"``, ``"pos_embed"``) keep those plain without skipping the module's
            children. A name matching no module or parameter is refused.

    Returns the Bayesian model (same structure, same forward signature). Modules with parameters that are neither
    Linear/Conv2d, a pass-through layer nor one of :data:`KEPT_PLAIN` (e.g. an ``nn.LSTM``), and not skipped,
    raise a ``TypeError`` naming them, because their weights would silently stay deterministic. Subclasses of
    Linear/Conv2d are converted when they behave exactly like their base class (no own ``forward``, no extra
    parameters) and refused by name otherwise (unless ``filter_fn`` or ``skip`` leaves them plain). The Bayesian
    Linear layers take inputs of any rank ``(..., features)``; see :class:`bayescomp.priors.base.BayesianLinear`.
    """
    spec = get_prior(prior)
    config = make_config(prior, config)
    if not is_dataclass(config):
        raise TypeError("config must be a dataclass")
    skip = _check_skip(model, skip)
    chosen = list(_chosen_layers(model, "", filter_fn, skip))  # everything is checked before anything changes
    model = model if inplace else copy.deepcopy(model)
    for name in chosen:
        layer = model.get_submodule(name)
        bayes = spec.from_linear(layer, config) if isinstance(layer, nn.Linear) else spec.from_conv2d(layer, config)
        if not name:
            return bayes
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, bayes)
    return model


def _check_skip(model: nn.Module, skip: Iterable[str]) -> frozenset[str]:
    if isinstance(skip, str):
        raise TypeError(f"skip must be a list of module names, got the string {skip!r} (write [{skip!r}])")
    names = frozenset(skip)
    known = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"skip names {unknown} match no module or parameter of the model; qualified names look "
                         f"like {[n for n, _ in model.named_modules() if n][:5]} (see model.named_modules()).")
    return names


def _chosen_layers(module: nn.Module, name: str, filter_fn: FilterFn | None,
                   skip: frozenset[str]) -> Iterator[str]:
    """Qualified names of the layers to convert, in module order; refuses weighted modules it does not know."""
    if name in skip or isinstance(module, (BayesianLayer,) + PASS_THROUGH + KEPT_PLAIN):
        return
    base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d if isinstance(module, nn.Conv2d) else None
    if base is not None:
        if filter_fn is not None and not filter_fn(module, name):
            return
        if not _convertible(module, base):
            raise TypeError(
                f"module {name!r} ({type(module).__name__}) subclasses {base.__name__} but changes its forward or "
                "adds parameters/submodules; converting it would silently drop that behaviour and leaving it "
                f"plain would leave it deterministic and never pruned. Use a plain {base.__name__} there, or leave "
                f"it plain on purpose with bayesify(..., skip=[{name!r}]) or filter_fn.")
        yield name
        return
    own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
    if any(p not in skip for p in own):
        known = ", ".join(t.__name__ for t in PASS_THROUGH + KEPT_PLAIN)
        raise TypeError(
            f"module {name!r} ({type(module).__name__}) has parameters {own} but no Bayesian counterpart; "
            f"supported weight layers are nn.Linear and nn.Conv2d (and {known} kept as they are). Replace it, or "
            f"leave it deterministic on purpose with bayesify(..., skip=[{name!r}]) (the module and everything "
            f"below it) or skip={own} (only these parameters).")
    for child_name, child in module.named_children():
        yield from _chosen_layers(child, f"{name}.{child_name}" if name else child_name, filter_fn, skip)


def _convertible(module: nn.Module, base: type[nn.Module]) -> bool:
    """A Linear/Conv2d (sub)class that behaves exactly like ``base``: its forward and parameters are the base's."""
    if type(module) is base:
        return True
    own = {name for name, _ in module.named_parameters(recurse=False)}
    return type(module).forward is base.forward and own <= {"weight", "bias"} and not list(module.children())
