"""Contexts of conditional compression: which classes the device will see, and how much compute it has.

A context is a set of at least two classes of the data set (order and repeats are errors, not silently fixed,
because a user who repeats a class has probably mistyped another) and a budget in (0, 1]: the largest fraction
of the dense network's multiply-accumulates the generated network may spend. The hypernetwork reads a context as
the multi-hot class vector followed by log(budget).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from bayescomp.data import TensorData


class ContextError(ValueError):
    """A context names unknown or repeated classes, too few classes, or a budget outside (0, 1]."""


@dataclass(frozen=True)
class Context:
    """A validated context: sorted distinct class indices and a budget in (0, 1]."""

    classes: tuple[int, ...]
    budget: float = 1.0

    @classmethod
    def make(cls, classes: Iterable[int], num_classes: int, budget: float = 1.0) -> Context:
        """Validate and build a context; raises :class:`ContextError` naming what is wrong."""
        raw = list(classes)
        if not raw:
            raise ContextError("the context has no classes; give at least two, e.g. classes=[0, 3]")
        try:
            if any(isinstance(c, bool) for c in raw):
                raise TypeError
            raw = [operator.index(c) for c in raw]
        except TypeError:
            raise ContextError(f"classes must be integers, got {raw}") from None
        unknown = sorted({c for c in raw if not 0 <= c < num_classes})
        if unknown:
            raise ContextError(f"unknown classes {unknown}: this network knows classes 0..{num_classes - 1}")
        repeated = sorted({c for c in raw if raw.count(c) > 1})
        if repeated:
            raise ContextError(f"classes {repeated} are repeated in {raw}; name every class once")
        if len(raw) < 2:
            raise ContextError(f"the context has one class ({raw[0]}); a classifier needs at least two (a single "
                               "class needs no network)")
        budget = float(budget)
        if not math.isfinite(budget) or not 0.0 < budget <= 1.0:
            raise ContextError(f"budget must be in (0, 1] (a fraction of the dense network's compute), got {budget}")
        return cls(tuple(sorted(raw)), budget)

    def vector(self, num_classes: int) -> torch.Tensor:
        """The hypernetwork's input: multi-hot classes, then log(budget)."""
        out = torch.zeros(num_classes + 1)
        out[list(self.classes)] = 1.0
        out[-1] = math.log(self.budget)
        return out


def parse_classes(text: str) -> list[int]:
    """``"0,3,7"`` -> ``[0, 3, 7]`` (for the CLI); raises :class:`ContextError` on anything else."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [int(t) for t in items]
    except ValueError:
        raise ContextError(f"--classes expects comma-separated class indices like 0,3,7, got {text!r}") from None


def restrict(data: TensorData, classes: Sequence[int]) -> TensorData:
    """The examples of ``classes`` only, labels renumbered to positions in ``classes`` (so that they index the
    generated network's outputs)."""
    classes_t = torch.as_tensor(list(classes), dtype=torch.long)
    keep = torch.isin(data.labels, classes_t)
    lookup = torch.full((int(data.labels.max()) + 1 if len(data) else 1,), -1, dtype=torch.long)
    lookup[classes_t[classes_t < lookup.numel()]] = torch.arange(len(classes_t))[classes_t < lookup.numel()]
    labels = lookup[data.labels[keep]]
    return TensorData(data.images[keep], labels)


def random_contexts(count: int, num_classes: int, sizes: Sequence[int], seed: int,
                    budget: float = 1.0) -> list[Context]:
    """``count`` seeded random contexts whose sizes are drawn uniformly from ``sizes``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        k = int(sizes[int(torch.randint(len(sizes), (1,), generator=generator))])
        classes = torch.randperm(num_classes, generator=generator)[:k].tolist()
        out.append(Context.make(classes, num_classes, budget))
    return out
