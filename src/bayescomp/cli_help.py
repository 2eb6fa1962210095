"""Help texts that state every option's real default exactly once (issue 19, item 7).

argparse's ``ArgumentDefaultsHelpFormatter`` prints ``(default: None)`` for options whose default is decided later
(per model, per method) and repeats a default the help text already spells out. Here the formatter states a
default only where it is a value, and the per-model / per-method defaults are written from the tables the run
itself reads (``bayescomp.run_config.RunConfig``, the method registry), so the help cannot drift from the code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import fields

from bayescomp.methods import get_method, list_methods
from bayescomp.models import MODELS
from bayescomp.train import TrainConfig

#: Where ``--data-dir`` looks when it is not given (:func:`bayescomp.data.resolve_data_dir`).
DATA_DIR_DEFAULT = "$BAYESCOMP_DATA, else ../shared/data, else the `bayescomp data download` cache"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help only when X is a value and the help does not already say what
    the default is: ``None``, ``False`` and ``[]`` mean "decided elsewhere" or "off", which the text describes."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or not _is_stated(action.default):
            return text
        return f"{text} (default: %(default)s)"


def _is_stated(default: object) -> bool:
    if default is argparse.SUPPRESS or default is None or isinstance(default, bool):
        return False
    return not (isinstance(default, (list, tuple, dict)) and not default)


def _grouped(items: Iterable[tuple[str, object]]) -> list[tuple[str, list[str]]]:
    """``[(name, value)]`` -> ``[(value, names)]``, the names sharing a value together, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name, value in items:
        groups.setdefault(_show(value), []).append(name)
    return list(groups.items())


def _listed(groups: list[tuple[str, list[str]]]) -> str:
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups)


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _schedules() -> dict[str, tuple[TrainConfig, TrainConfig]]:
    """Each zoo model's (dense, Bayesian) training settings, exactly as a run of it starts with them."""
    from bayescomp.run_config import RunConfig

    configs = {name: RunConfig(model=name, data=MODELS[name].default_data) for name in sorted(MODELS)}
    return {name: (config.dense, config.bayes) for name, config in configs.items()}


def per_model(field: str, phase: str = "bayes") -> str:
    """The default of a :class:`TrainConfig` field per zoo model (``phase`` ``"dense"`` or ``"bayes"``):
    ``"per model: 30 for lenet300, lenet5; 60 for vgg16"``, or the one value all models share."""
    index = ("dense", "bayes").index(phase)
    groups = _grouped((name, getattr(pair[index], field)) for name, pair in _schedules().items())
    return groups[0][0] if len(groups) == 1 else "per model: " + _listed(groups)


def per_method(value: Callable[[str], object | None]) -> str:
    """``"0.2 for gnj, ghs"``: ``value(method)`` for every registered method it applies to (``None``: not)."""
    found = [(name, value(name)) for name in list_methods()]
    return _listed(_grouped((name, v) for name, v in found if v is not None))


def method_setting(field: str) -> Callable[[str], object | None]:
    """A method's default for its config field ``field`` where the method has a ``bayescomp run`` flag for it."""

    def value(name: str) -> object | None:
        method = get_method(name)
        return getattr(method.make_settings(), field) if field in method.cli_options else None

    return value


def group_lr_scale(name: str) -> object | None:
    """The learning-rate multiplier a method gives the parameters ``--group-lr-scale`` sets."""
    method = get_method(name)
    scales = sorted({method.lr_scales.get(suffix, 1.0) for suffix in method.group_lr_suffixes})
    return None if not scales else scales[0] if len(scales) == 1 else "/".join(map(_show, scales))


def finetune_epochs(name: str) -> int:
    return get_method(name).default_finetune_epochs


def per_weight_thresholds() -> str:
    """``"svd 3, turbo 0"``: the own threshold of every prior that prunes single weights rather than groups."""
    from bayescomp.priors import PRIORS
    from bayescomp.priors.base import BayesianLayer

    found = []
    for name, spec in sorted(PRIORS.items()):
        layer_cls = getattr(spec.from_linear, "__self__", None)
        overrides = isinstance(layer_cls, type) and layer_cls.weight_keep_mask is not BayesianLayer.weight_keep_mask
        threshold = {f.name: f.default for f in fields(spec.config_cls)}.get("threshold")
        if overrides and threshold is not None:
            found.append(f"{name} {_show(threshold)}")
    return ", ".join(found)
