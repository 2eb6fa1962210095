"""The layer chain of a sequential network: which prunable layers feed which, and through what.

The foundation handles networks that are (possibly nested) ``nn.Sequential`` chains: prunable layers
(Linear/Conv2d, plain or Bayesian) separated by pass-through modules (activations, pooling, batch norm, dropout,
flatten). Every other module, and any non-sequential container, gets an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from bayescomp.bayesify import PASS_THROUGH
from bayescomp.modules import InputSelect, Normalize
from bayescomp.priors.base import BayesianLayer


class UnsupportedModelError(TypeError):
    """The model contains a module or a structure the compression path cannot shrink."""


@dataclass
class ChainLayer:
    """A prunable layer and the pass-through modules that follow it (up to the next prunable layer)."""

    index: int  # position among the prunable layers
    name: str  # qualified module name
    module: nn.Module
    kind: str  # "linear" or "conv"
    after: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def in_size(self) -> int:
        return self.module.in_features if self.kind == "linear" else self.module.in_channels

    @property
    def out_size(self) -> int:
        return self.module.out_features if self.kind == "linear" else self.module.out_channels


@dataclass
class Chain:
    head: list[tuple[str, nn.Module]]  # modules before the first prunable layer
    layers: list[ChainLayer]


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix, module)]


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, BayesianLayer):
        return "linear" if module.group_dim == "in" else "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    return None


def build_chain(model: nn.Module) -> Chain:
    """Split ``model`` into prunable layers and the modules between them, checking everything is supported."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not an nn.Sequential; the compression path currently shrinks sequential "
            "chains of Linear/Conv2d layers. Express the model as nn.Sequential (see bayescomp.models)."
        )
    head: list[tuple[str, nn.Module]] = []
    layers: list[ChainLayer] = []
    for name, module in _leaves(model):
        kind = _kind(module)
        if kind is not None:
            if kind == "conv" and getattr(module, "groups", 1) != 1:
                raise UnsupportedModelError(f"module {name!r}: grouped convolutions are not supported yet")
            if layers and layers[-1].kind == "linear" and kind == "conv":
                raise UnsupportedModelError(f"module {name!r}: a Conv2d after a Linear layer is not supported")
            layers.append(ChainLayer(len(layers), name, module, kind))
        elif isinstance(module, PASS_THROUGH + (Normalize, InputSelect)):
            if isinstance(module, (Normalize, InputSelect)) and layers:
                raise UnsupportedModelError(f"module {name!r}: {type(module).__name__} must come before all layers")
            (layers[-1].after if layers else head).append((name, module))
        else:
            raise UnsupportedModelError(
                f"module {name!r} ({type(module).__name__}) is not supported by the compression path; supported: "
                f"Linear, Conv2d, Normalize, InputSelect and {', '.join(t.__name__ for t in PASS_THROUGH)}"
            )
    if not layers:
        raise UnsupportedModelError("the model has no Linear or Conv2d layer to compress")
    return Chain(head, layers)

