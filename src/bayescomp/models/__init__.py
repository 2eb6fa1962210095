"""The model zoo: every model is an ``nn.Sequential`` that takes images in [0, 1] and returns logits.

Models are registered by key (``lenet300``, ``lenet5``, ``vgg16``) so that tests and the CLI can iterate them.
Each model starts with a :class:`~bayescomp.modules.Normalize` layer, so the input normalisation travels with
the model through compression and export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from bayescomp.models.pretrained import load_pretrained


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and the data it is meant for (used for sensible defaults)."""

    name: str
    builder: Callable[..., nn.Sequential]
    default_data: str
    description: str


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, default_data: str, description: str) -> Callable:
    """Decorator adding a builder ``f(num_classes, input_shape, mean, std) -> nn.Sequential`` to the zoo."""

    def wrap(builder: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
        MODELS[name] = ModelSpec(name, builder, default_data, description)
        return builder

    return wrap


def create_model(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    pretrained: bool = False,
    data: str | None = None,
) -> nn.Sequential:
    """Build a zoo model by key; unknown keys raise a ``ValueError`` listing the known ones.

    ``pretrained=True`` loads the weights shipped for ``data`` (default: the model's default data set), checked
    against their SHA-256 (:mod:`bayescomp.models.pretrained`); build the model with that data set's classes,
    shape and normalisation.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    model = MODELS[name].builder(num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std)
    if pretrained:
        load_pretrained(model, name, data or MODELS[name].default_data)
    return model


from bayescomp.models import lenet, resnet, vgg  # noqa: E402,F401  (registers the models)

__all__ = ["MODELS", "ModelSpec", "create_model", "register_model"]
