"""The model zoo: every model is an ``nn.Sequential`` that takes images in [0, 1] and returns logits.

Models are registered by key (``lenet300``, ``lenet5``, ``vgg16``) so that tests and the CLI can iterate them.
Each model starts with a :class:`~bayescomp.modules.Normalize` layer, so the input normalisation travels with
the model through compression and export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from bayescomp.data import DATASETS
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
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pretrained: bool = False,
    data: str | None = None,
) -> nn.Sequential:
    """Build a zoo model by key; unknown keys raise a ``ValueError`` listing the known ones.

    ``num_classes``, ``input_shape``, ``mean`` and ``std`` left out come from the data set ``data`` (default: the
    model's own, e.g. CIFAR-10 for ``resnet20``), so ``create_model("resnet20", pretrained=True)`` builds the
    network its shipped weights were trained as. ``pretrained=True`` loads those weights, checked against their
    SHA-256 (:mod:`bayescomp.models.pretrained`); a model built for another shape or class count is refused.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    data = data or MODELS[name].default_data
    spec = DATASETS.get(data)
    if spec is None and None in (num_classes, input_shape, mean, std):
        raise ValueError(f"unknown data set {data!r} for the defaults of {name!r}: pass num_classes, input_shape, "
                         f"mean and std, or one of {', '.join(DATASETS)}")
    if spec is not None:
        num_classes = spec.num_classes if num_classes is None else num_classes
        input_shape = spec.input_shape if input_shape is None else input_shape
        mean = spec.mean if mean is None else mean
        std = spec.std if std is None else std
    model = MODELS[name].builder(num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std)
    if pretrained:
        load_pretrained(model, name, data)
    return model


from bayescomp.models import lenet, resnet, vgg  # noqa: E402,F401  (registers the models)

__all__ = ["MODELS", "ModelSpec", "create_model", "register_model"]
