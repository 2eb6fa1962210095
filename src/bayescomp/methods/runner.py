"""The method-independent sequence of a compression run: prepare, train, compress, fine-tune, re-quantise.

Used by both :func:`bayescomp.pipeline.run` (zoo models, run directories, reports) and
:func:`bayescomp.pipeline.compress_model` (any trained ``nn.Module``), so there is one path for every method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from bayescomp.compress import CompressionResult, quantize_model
from bayescomp.methods.base import Method, RunContext
from bayescomp.methods.finetune import finetune_keeping_zeros
from bayescomp.train import TrainHistory, evaluate, seed_everything


@dataclass
class MethodOutcome:
    """What one method run produced: the trained model, its history and the compression result."""

    model: nn.Module
    history: TrainHistory
    result: CompressionResult | None = None
    test_error_pct_before_finetune: float | None = None
    finetune_validation: dict | None = None  # validation error before/after fine-tuning and whether it was kept


def prepare_and_train(method: Method, ctx: RunContext) -> MethodOutcome:
    """The method's model (seeded) and its training."""
    seed_everything(ctx.config.seed)
    model = method.prepare(ctx)
    ctx.log(f"{method.name}: training ({ctx.config.bayes.epochs} epochs)")
    history = method.train(model, ctx)
    ctx.state["history"] = history
    return MethodOutcome(model, history)


def guarded_finetune(model: nn.Module, ctx: RunContext, checkpoint: Any = None) -> dict[str, Any]:
    """Fine-tune the pruned plain model with ``ctx.config.finetune``, judged on the validation split only: if it
    raised the validation error and ``compress.finetune_guard`` is on, the weights from before it are restored.
    Returns the validation errors before and after and whether the fine-tuned weights were kept; where the
    threshold search read only part of the validation split (``compress.search_val_size``), also the error after
    fine-tuning on the other part (``val_error_pct_after_unseen``), which the search's choice did not see."""
    before = evaluate(model, ctx.data.val)["error_pct"]
    pruned_state = copy.deepcopy(model.state_dict())
    finetune_keeping_zeros(model, ctx.data, ctx.config.finetune, checkpoint, ctx.progress, ctx.log, ctx.device,
                           ctx.dense, ctx.amp)
    after = evaluate(model, ctx.data.val)["error_pct"]
    kept = after <= before or not ctx.config.compress.finetune_guard
    if not kept:
        model.load_state_dict(pruned_state)
        ctx.log(f"fine-tuning raised the validation error ({before:.2f}% -> {after:.2f}%); keeping the pruned "
                "weights from before it (compress.finetune_guard)")
    record = {"val_error_pct_before": before, "val_error_pct_after": after, "kept": kept}
    searched = ctx.config.compress.search_val_size
    if searched is not None and searched < len(ctx.data.val):
        unseen = ctx.data.val.subset_complement(searched, seed=0)  # the search reads .subset(searched, seed=0)
        record.update(val_error_pct_after_unseen=evaluate(model, unseen)["error_pct"], val_images_unseen=len(unseen))
    return record


def compress_and_finetune(method: Method, ctx: RunContext, outcome: MethodOutcome,
                          result: CompressionResult | None = None, checkpoint: Any = None) -> MethodOutcome:
    """Compress the trained model (unless ``result`` is given, e.g. found by a data-parallel run), then the shared
    fine-tuning of the pruned plain model and its re-quantisation, where the method asks for it."""
    if result is None:
        result = method.compress(outcome.model, ctx)
    finetune = ctx.config.finetune
    if method.finetune_after_compress and finetune.epochs > 0:
        outcome.test_error_pct_before_finetune = evaluate(result.model, ctx.data.test)["error_pct"]
        ctx.log(f"pruned test error before fine-tuning {outcome.test_error_pct_before_finetune:.2f}%")
        teacher = f", distilling from the dense model (alpha {finetune.distill:g}, T {finetune.distill_temperature:g})" \
            if finetune.distill > 0 else ""
        precision = ", bf16" if ctx.amp else ""
        ctx.log(f"fine-tuning the pruned model ({finetune.epochs} epochs, deterministic, lr {finetune.lr}{precision}"
                f"{teacher})")
        outcome.finetune_validation = guarded_finetune(result.model, ctx, checkpoint)
        result.model.eval()
        result.quantized_model = quantize_model(result.model, result.precisions)
    outcome.result = result
    return outcome
