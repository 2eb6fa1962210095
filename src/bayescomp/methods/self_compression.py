"""Self-compression (Carannante et al. 2020) as a method.

A density-propagating twin of the network (mean and covariance through every layer) is trained with its own
objective; kernels are deleted by norm while the validation error allows, with short retraining, repeated; the
result goes through the shared shrinking path. The kept kernels' posterior variances are saved in the file's
metadata (``variance_head``) so :func:`bayescomp.selfcompress.load_with_uncertainty` can use them.
"""

from __future__ import annotations

from dataclasses import replace
import torch
from torch import nn

from bayescomp.compress import prunable_modules
from bayescomp.magnitude import magnitude_compress
from bayescomp.methods.base import Method, RunContext, register_method, shared_training
from bayescomp.selfcompress.procedure import (
    SelfCompressionConfig, dense_shaped_posterior_mean, density_twin, self_compress, variance_head,
)
from bayescomp.train import TrainHistory, evaluate


def _prepare(ctx: RunContext) -> nn.Module:
    return density_twin(ctx.dense, ctx.settings)


def _train(model: nn.Module, ctx: RunContext) -> TrainHistory:
    settings = ctx.settings
    ctx.log(f"self-compression: training the density-propagating network ({settings.covariance} covariance, "
            f"{settings.likelihood} likelihood, {ctx.config.bayes.epochs} epochs)")
    return shared_training(model, ctx, objective=settings.objective(len(ctx.data.train)))


def _compress(model: nn.Module, ctx: RunContext):
    settings, bayes = ctx.settings, ctx.config.bayes
    ctx.log(f"deleting kernels (tolerance {settings.tolerance_pct} points of validation error)")
    retrain = replace(bayes, epochs=settings.retrain_epochs, lr=bayes.lr / 10, lr_schedule="constant",
                      kl_warmup_epochs=0.0)
    small, kept, rounds = self_compress(model, ctx.data, settings, retrain, log=ctx.log)
    plain = dense_shaped_posterior_mean(ctx.dense, small, kept)
    ctx.metadata["variance_head"] = variance_head(small)
    ctx.extras["self_compression_rounds"] = rounds
    ctx.state["density_twin"] = small  # its test error is a report figure, read after compression
    return magnitude_compress(plain, [torch.ones_like(m.weight) for m in prunable_modules(plain)])


def _report_extras(model: nn.Module | None, ctx: RunContext) -> dict:
    """The compressed density twin's own test error, beside the plain model's. Computed here, at report time,
    not in ``compress``: compression decides only on the validation split, so a caller that compresses without
    reporting (the blind rule of ``benchmarks/blind_row.py``) never reads the test set."""
    twin = ctx.state.get("density_twin")
    return {} if twin is None else {"test_error_pct_density": evaluate(twin, ctx.data.test)["error_pct"]}


register_method(Method(
    name="self", config_cls=SelfCompressionConfig, needs="density", aliases=("self-compression",),
    description="self-compression: a density-propagating BNN deletes its redundant kernels (Carannante et al. 2020)",
    prepare=_prepare, train=_train, compress=_compress,
    finetune_after_compress=False, posterior_in_report=False, report_extras=_report_extras,
    post_training_settings=("criterion", "tolerance_pct", "retrain_epochs", "max_rounds"),
))
