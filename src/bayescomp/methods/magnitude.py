"""Magnitude pruning as a method: the non-Bayesian baseline (gradual pruning with fine-tuning, Zhu & Gupta 2017).

The dense copy is pruned in rounds with fine-tuning in between (:func:`bayescomp.magnitude.prune_and_finetune`),
then shrunk, packed and reported like every other method. Weights stay float32: there is no posterior to read
bit widths from.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from bayescomp.magnitude import MagnitudeConfig, magnitude_compress, prune_and_finetune
from bayescomp.methods.base import Method, RunContext, register_method
from bayescomp.train import TrainHistory


def _prepare(ctx: RunContext) -> nn.Module:
    return copy.deepcopy(ctx.dense)


def _train(model: nn.Module, ctx: RunContext) -> TrainHistory:
    settings, finetune = ctx.settings, ctx.config.finetune
    ctx.log(f"magnitude pruning to sparsity {settings.sparsity} "
            f"({'structured' if settings.structured else 'unstructured'}, {settings.scope}), {settings.rounds} "
            f"rounds, {finetune.epochs} fine-tuning epochs")
    ctx.state["masks"] = prune_and_finetune(model, ctx.data, settings, finetune, log=ctx.log, progress=ctx.progress,
                                            teacher=ctx.dense)
    return TrainHistory()


def _compress(model: nn.Module, ctx: RunContext):
    return magnitude_compress(model, ctx.state["masks"])


def _extras(model: nn.Module | None, ctx: RunContext) -> dict[str, Any]:
    return {"epochs": 0}  # no Bayesian training


def _describe(report: Mapping[str, Any]) -> list[str]:
    opts = report["config"]["prior"]
    return [f"Magnitude pruning ({'structured' if opts['structured'] else 'unstructured'}, {opts['scope']} "
            f"threshold) to sparsity {opts['sparsity']} in {opts['rounds']} rounds with "
            f"{report['finetune_epochs']} epochs of fine-tuning in all; weights stay float32 (32 bits)."]


register_method(Method(
    name="magnitude", config_cls=MagnitudeConfig, needs="none",
    description="magnitude pruning with gradual fine-tuning (non-Bayesian baseline)",
    prepare=_prepare, train=_train, compress=_compress, report_extras=_extras, describe=_describe,
    cli_options=("sparsity", "scope", "rounds", "structured"), default_finetune_epochs=10,
    finetune_after_compress=False, posterior_in_report=False,
))
