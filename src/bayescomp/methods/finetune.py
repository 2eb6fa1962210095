"""Fine-tuning a pruned model, and choosing the pruning level by the validation error after fine-tuning.

Both train (``bayescomp.train``) and compress (``bayescomp.compress``), so they sit above both layers, here with
the methods that use them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from bayescomp.compress import CompressionResult, compress, prunable_modules
from bayescomp.compress.search import thresholds_for_counts
from bayescomp.data import DataBundle
from bayescomp.magnitude import _apply_masks, _make_permanent
from bayescomp.train import TrainConfig, evaluate, fit


def finetune_keeping_zeros(model: nn.Module, data: DataBundle, config: TrainConfig, checkpoint: Path | None,
                           progress: bool, log, device: str | None = None, dense: nn.Module | None = None,
                           amp: bool = False) -> None:
    """Fine-tune the pruned plain model in place (on ``device``, the model's own when None); weights that are zero
    (per-weight pruning: Sparse VD, Turbo-VBI) stay zero (a fixed ``torch.nn.utils.prune`` mask during training,
    made permanent afterwards). With ``config.distill > 0`` it distils from ``dense``, the run's dense model
    (:mod:`bayescomp.distill`). ``amp``: bf16 layer products, as the run's Bayesian training (the pipeline passes
    the run's precision, so ``--precision`` / ``--amp`` cover fine-tuning too)."""
    layers = [m for m in prunable_modules(model) if bool((m.weight == 0).any())]
    _apply_masks(layers, [m.weight.detach() != 0 for m in layers])
    try:
        fit(model, data, config, checkpoint_path=checkpoint, progress=progress, log=log, device=device,
            teacher=dense if config.distill > 0 else None, amp=amp)
    finally:
        _make_permanent(layers)


def finetune_aware_compress(model: nn.Module, data: DataBundle, config: Any, log=print,
                            device: str | None = None, dense: nn.Module | None = None,
                            amp: bool = False) -> CompressionResult:
    """Pick the pruning level by the validation error *after* fine-tuning (see ``CompressConfig.finetune_search``).

    The greedy search runs with a wide tolerance to list candidate plans from mild to severe; a bisection along
    them fine-tunes each probed candidate (``config.finetune``) and keeps the most compressed one whose validation
    error is within ``tolerance_pct`` points of the unpruned posterior mean's (the reference of the plain search;
    the dense model's is not used because fine-tuning a pruned posterior rarely returns to it). Only the
    validation split is used. ``config`` is a :class:`bayescomp.pipeline.RunConfig`; ``device``: where the
    searches evaluate and the probes are fine-tuned; ``dense``: the teacher when ``config.finetune.distill > 0``;
    ``amp``: fine-tune the probes in bf16, as the run's training.
    """
    wide = compress(model, data.val, replace(config.compress, tolerance_pct=config.compress.search_range_pct),
                    device=device, dense=dense)
    path = wide.search_path
    budget = wide.base_val_error_pct + config.compress.tolerance_pct
    probes: dict[int, float] = {}

    def finetuned_val_error(k: int) -> float:
        thresholds = thresholds_for_counts(wide.log_alpha, path[k]["pruned"])
        candidate = compress(model, data.val, replace(config.compress, thresholds=thresholds), dense=dense)
        finetune_keeping_zeros(candidate.model, data, config.finetune, None, False, lambda *_: None, device, dense,
                               amp)
        probes[k] = evaluate(candidate.model, data.val)["error_pct"]
        log(f"  candidate {k}/{len(path) - 1}: arch {candidate.architecture_kept}, "
            f"{candidate.compression_architecture:.1f}x, fine-tuned val err {probes[k]:.2f}% (budget {budget:.2f}%)")
        return probes[k]

    lo, hi = 0, len(path) - 1  # invariant: lo is acceptable (no pruning is assumed to be), hi+1.. unknown/bad
    if finetuned_val_error(hi) <= budget:
        lo = hi
    while lo < hi - 1 and hi > 0:
        mid = (lo + hi) // 2
        if finetuned_val_error(mid) <= budget:
            lo = mid
        else:
            hi = mid
    chosen = thresholds_for_counts(wide.log_alpha, path[lo]["pruned"])
    result = compress(model, data.val, replace(config.compress, thresholds=chosen), dense=dense)
    result.search_path = [dict(p, finetuned_val_error_pct=probes.get(i)) for i, p in enumerate(path)]
    result.base_val_error_pct = wide.base_val_error_pct
    return result


def search_and_compress(model: nn.Module, ctx: Any) -> CompressionResult:
    """The compress hook of the priors: the posterior's threshold search on the validation split (fine-tuning
    aware when ``compress.finetune_search`` and fine-tuning epochs are set, unless a MAC budget decides the pruning
    level: ``compress.target_macs`` / ``target_weights``), evaluating on the run's device."""
    config = ctx.config
    if config.compress.finetune_search and config.finetune.epochs > 0 and not config.compress.budgeted:
        return finetune_aware_compress(model, ctx.data, config, ctx.log, ctx.device, ctx.dense, ctx.amp)
    return compress(model, ctx.data.val, config.compress, log=ctx.log if ctx.progress else None, device=ctx.device,
                    dense=ctx.dense)
