"""Check every user-given value before any work starts (issue 15, item 3).

A wrong value that reaches training fails late (after minutes of work) or, worse, gives a silently wrong result:
``--batch-size 0`` read as "unset", ``--val-size 0`` validating on an empty set, ``clip_var=-1`` clipping every
variance to nothing. Each check raises a :class:`ValueError` that names the option and its accepted range; the
CLI turns it into exit code 2 without a traceback.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import MISSING, fields
from typing import Any

def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``what`` and the choices."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def choice_from_env(variable: str, choices: tuple[str, ...], what: str, default: str = "auto") -> str:
    """A process-wide setting from ``$variable`` (case and surrounding spaces ignored; unset or empty: ``default``),
    checked by :func:`check_choice`."""
    return check_choice(os.environ.get(variable, default).strip().lower() or default, choices, what)


#: option -> (lowest, inclusive?) ; ``None`` values are "not given" and pass.
_RUN_LIMITS: dict[str, tuple[float, bool, str]] = {
    "epochs": (0, True, "an integer >= 0 (0 skips Bayesian training)"),
    "dense_epochs": (0, True, "an integer >= 0"),
    "finetune_epochs": (0, True, "an integer >= 0 (0: no fine-tuning)"),
    "batch_size": (1, True, "an integer >= 1"),
    "lr": (0, False, "a finite number > 0"),
    "kl_warmup": (0, True, "a finite number >= 0"),
    "group_lr_scale": (0, False, "a finite number > 0"),
    "tolerance": (0, True, "a finite number >= 0 (percentage points)"),
    "clip_var": (0, False, "a finite number > 0"),
    "tau0": (0, False, "a finite number > 0"),
    "val_size": (1, True, "an integer >= 1 (the threshold search and the per-epoch validation need examples)"),
    "train_subset": (1, True, "an integer >= 1"),
    "test_subset": (1, True, "an integer >= 1"),
    "rounds": (1, True, "an integer >= 1"),
    "nproc": (1, True, "an integer >= 1"),
    "budget": (0, False, "in (0, 1] (a fraction of the dense multiply-accumulates)"),
}


def check_number(option: str, value: Any, low: float, inclusive: bool, accepted: str) -> None:
    """Raise ``ValueError`` naming ``option`` unless ``value`` is a finite number above ``low``."""
    flag = "--" + option.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{flag} must be {accepted}, got {value!r}")
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise ValueError(f"{flag} must be {accepted}, got {value!r}")


def check_cli_values(args: Any) -> None:
    """Check the numeric options of ``bayescomp run`` / ``hyper train`` / ``hyper generate`` (those present)."""
    for option, (low, inclusive, accepted) in _RUN_LIMITS.items():
        value = getattr(args, option, None)
        if value is not None:
            check_number(option, value, low, inclusive, accepted)
    if getattr(args, "budget", None) is not None and args.budget > 1:
        raise ValueError(f"--budget must be in (0, 1] (a fraction of the dense multiply-accumulates), got "
                         f"{args.budget!r}")
    sparsity = getattr(args, "sparsity", None)
    if sparsity is not None and (not math.isfinite(sparsity) or not 0 <= sparsity < 1):
        raise ValueError(f"--sparsity must be a fraction in [0, 1), got {sparsity!r}")
    thresholds = getattr(args, "thresholds", None)
    if thresholds is not None and thresholds != "search":
        values = thresholds if isinstance(thresholds, list) else [thresholds]
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(f"--thresholds must be finite numbers or 'search', got {thresholds!r}")


def check_threshold_count(thresholds: Any, layers: int, model: str) -> None:
    """A list of thresholds must have one entry per prunable layer (or be a single number)."""
    if isinstance(thresholds, (list, tuple)) and len(thresholds) not in (1, layers):
        raise ValueError(f"--thresholds: {model} has {layers} prunable layers (or coupled channel groups), so "
                         f"give 1 or {layers} thresholds, got {len(thresholds)}")


# Fields whose value must be > 0 (scales, variances, shapes); probabilities must lie in [0, 1].
_POSITIVE_FIELDS = {"clip_var", "tau0", "slab_std", "spike_std", "a_active", "a_inactive", "sigma_clip",
                    "budget_power", "hidden", "depth"}
_UNBOUNDED = {"threshold", "init_log_sigma2", "max_log_sigma2", "rho_init"}


def _is_probability(name: str) -> bool:
    return name in {"p01", "p11", "p_start", "p01_vertical", "p11_vertical", "p_neuron", "bp_damping", "sparsity"}


def _type_ok(value: Any, hint: Any) -> bool:
    args = typing.get_args(hint)
    if args and type(None) in args:
        if value is None:
            return True
        hint = next(a for a in args if a is not type(None))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    return True  # containers and other types: left to the config's own checks


def check_config_values(config_cls: type, values: dict[str, Any], flag: str = "--prior-option") -> None:
    """Type- and range-check ``values`` (field -> value) against the dataclass ``config_cls``.

    Raises:
        ValueError: naming the field, its expected type or range, and the value given.
    """
    hints = typing.get_type_hints(config_cls)
    known = {f.name: f for f in fields(config_cls)}
    for name, value in values.items():
        if name not in known:
            raise ValueError(f"{flag} {name}: unknown field of {config_cls.__name__}; known: "
                             f"{', '.join(sorted(known))}")
        hint = hints.get(name)
        if hint is not None and not _type_ok(value, hint):
            raise ValueError(f"{flag} {name}={value!r}: {config_cls.__name__}.{name} must be of type "
                             f"{getattr(hint, '__name__', hint)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or name in _UNBOUNDED:
            continue
        default = known[name].default
        if not math.isfinite(value):
            raise ValueError(f"{flag} {name}={value!r}: must be finite")
        if _is_probability(name) and not 0 <= value <= 1:
            raise ValueError(f"{flag} {name}={value!r}: {config_cls.__name__}.{name} is a probability in [0, 1]")
        if name in _POSITIVE_FIELDS and value <= 0:
            raise ValueError(f"{flag} {name}={value!r}: {config_cls.__name__}.{name} must be > 0")
        if default is not MISSING and isinstance(default, (int, float)) and default >= 0 and value < 0:
            raise ValueError(f"{flag} {name}={value!r}: {config_cls.__name__}.{name} must be >= 0")
