"""A toy compression method, registered by this one file: every layer after the first keeps the input units
(hidden units of the layer before) whose weight columns have the largest L2 norm (no training). It exists to show (and test) that adding a method takes one
file plus one import line (``tests/conftest.py``): the CLI, the pipeline, the report and the registry-iterating
tests pick it up without naming it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from bayescomp.compress import prunable_modules
from bayescomp.magnitude import magnitude_compress
from bayescomp.methods import Method, RunContext, register_method
from bayescomp.train import TrainHistory


@dataclass
class RowNormConfig:
    keep_fraction: float = 0.75  # of each hidden layer's units


def _prepare(ctx: RunContext) -> nn.Module:
    return copy.deepcopy(ctx.dense)


def _train(model: nn.Module, ctx: RunContext) -> TrainHistory:
    return TrainHistory()  # nothing to train


def _compress(model: nn.Module, ctx: RunContext):
    layers = prunable_modules(model)
    masks = []
    for i, layer in enumerate(layers):
        weight = layer.weight.detach()
        if i == 0:  # the input pixels are all kept
            masks.append(torch.ones_like(weight))
            continue
        norms = weight.transpose(0, 1).flatten(1).norm(dim=1)  # one norm per input unit (column / channel)
        keep = max(1, round(ctx.settings.keep_fraction * len(norms)))
        columns = torch.zeros(len(norms), dtype=torch.bool)
        columns[norms.argsort(descending=True)[:keep]] = True
        shape = [1, -1] + [1] * (weight.dim() - 2)
        masks.append(columns.view(shape).expand_as(weight).float())
    return magnitude_compress(model, masks)


TOY = register_method(Method(
    name="toy-rownorm", config_cls=RowNormConfig, needs="none",
    description="toy: keep the hidden units with the largest outgoing-weight norms (tests only)",
    prepare=_prepare, train=_train, compress=_compress, finetune_after_compress=False, posterior_in_report=False,
))
