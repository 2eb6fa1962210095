"""Multiply-accumulates of Linear and Conv2d layers: the FLOPs the report gives, and what a MAC budget
(``CompressConfig.target_macs``) is checked against. Re-exported by :mod:`bayescomp.measure`, which holds the other
measurements; it lives here because compression itself counts MACs when it prunes to a budget.

Bayesian layers that are not subclasses of ``nn.Linear``/``nn.Conv2d`` are recognised by duck typing (see
:func:`_layer_kind`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _layer_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv"`` or ``None`` (isinstance first, then duck typing for leaf modules)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if next(module.children(), None) is not None:
        return None
    if hasattr(module, "in_features") and hasattr(module, "out_features") and _weight_of(module) is not None:
        return "linear"
    if all(hasattr(module, a) for a in ("in_channels", "out_channels", "kernel_size")) \
            and _weight_of(module) is not None:
        return "conv"
    return None


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    for name in ("weight", "weight_mu"):
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor):
            return tensor
    return None


def count_flops(model: nn.Module, input_shape: tuple[int, ...], nonzero_only: bool = False) -> int:
    """FLOPs of one example, defined as the multiply-accumulates (MACs) of Linear and Conv2d layers.

    With ``nonzero_only`` only the MACs of non-zero weights count (what a sparse kernel would execute): each
    output position costs the non-zero weights of its output unit, i.e. positions per unit x nnz(weight).

    ``input_shape`` excludes the batch dimension. A zero input of batch size 1 is run through the model (in
    eval mode, without gradients) with forward hooks on every Linear/Conv2d (subclasses included):

    * Conv2d: ``output elements * (in_channels / groups) * kernel_h * kernel_w``;
    * Linear: ``output elements * in_features`` (= ``in * out`` for a 2-D input).

    Biases, activations, normalisation and pooling are not counted.
    """
    counts: list[int] = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        per_example = output.numel() // max(output.shape[0], 1) if output.dim() else output.numel()
        if nonzero_only:
            units = int(module.out_features if _layer_kind(module) == "linear" else module.out_channels)
            counts.append(per_example // units * int(torch.count_nonzero(module.weight)))
        elif _layer_kind(module) == "linear":
            counts.append(per_example * int(module.in_features))
        else:
            kh, kw = (module.kernel_size if isinstance(module.kernel_size, tuple)
                      else (module.kernel_size, module.kernel_size))
            counts.append(per_example * (int(module.in_channels) // int(module.groups)) * int(kh) * int(kw))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _layer_kind(m) is not None]
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), torch.zeros(()))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_shape), dtype=dtype, device=reference.device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(sum(counts))
