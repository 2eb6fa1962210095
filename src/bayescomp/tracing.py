"""Which layers produce a network's output, found by running it once.

The compression path never removes the output layer's units (they are the classes), and Turbo-VBI's neuron level
must not switch them off either; both ask this module, so the two cannot disagree on which layer that is.
"""

from __future__ import annotations

import torch
from torch import nn


def output_layers(model: nn.Module, example: torch.Tensor,
                  kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)) -> list[nn.Module]:
    """The modules of type ``kinds`` whose output tensor is returned by ``model(example)`` (for a tuple or list
    output, any element of it); else the last such module called; ``[]`` if none is called. Runs under
    ``torch.no_grad()`` in the model's current train/eval mode."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, a, out: seen.append((m, out)))
               for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    direct = [m for m, o in seen if any(o is x for x in outputs)]
    return direct or [m for m, _ in seen[-1:]]
