"""The whole job in one call: dense model -> Bayesian training -> compression -> packed file -> report.

``run(RunConfig(...))`` is what ``bayescomp run`` executes. Every stage writes into the run directory, so a run
that is interrupted resumes where it stopped (the dense model is cached and reused, Bayesian training resumes
from its last checkpoint, and compression is cheap to redo).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayescomp import distributed as dist_utils
from bayescomp import runlock
from bayescomp.bayesify import bayesify, make_config
from bayescomp.checkpoint import atomic_torch_save, safe_torch_load
from bayescomp.compress import CompressConfig, CompressionResult, compress, prunable_modules, quantize_model
from bayescomp.compress.packed import QuantSpec, packed_leaves, save_packed
from bayescomp.data import DataBundle, load_dataset
from bayescomp.models import MODELS, create_model
from bayescomp.models.pretrained import load_pretrained, read_manifest
from bayescomp.priors import PRIORS
from bayescomp.train import TrainConfig, evaluate, fit, seed_everything
from bayescomp.validate import check_threshold_count

#: Training defaults per model key (dense pre-training, Bayesian training); RESULTS.md records the settings
#: of every published run.
DEFAULT_SCHEDULES: dict[str, tuple[TrainConfig, TrainConfig]] = {
    "lenet300": (TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine"),
                 TrainConfig(epochs=30, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=2)),
    "lenet5": (TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine"),
               TrainConfig(epochs=30, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=2)),
    "resnet20": (TrainConfig(epochs=60, lr=1e-3, lr_schedule="cosine", weight_decay=1e-4, augment="crop_flip"),
                 TrainConfig(epochs=30, lr=1e-3, lr_schedule="cosine", kl_warmup_epochs=2, augment="crop_flip")),
    "resnet56": (TrainConfig(epochs=60, lr=1e-3, lr_schedule="cosine", weight_decay=1e-4, augment="crop_flip"),
                 TrainConfig(epochs=30, lr=1e-3, lr_schedule="cosine", kl_warmup_epochs=2, augment="crop_flip")),
    "vgg16": (TrainConfig(epochs=60, lr=1e-3, lr_schedule="cosine", weight_decay=5e-4),
              TrainConfig(epochs=60, lr=1e-4, lr_schedule="cosine", kl_warmup_epochs=5)),
}


#: Learning-rate multipliers of the Bayesian phase per method (see ``TrainConfig.lr_scales``): the parameters that
#: decide which groups survive (GNJ: the group noise; GHS: the log-normal scale factors, which live in log space
#: and start far from where the prior pulls unneeded groups) move ten times faster than the weights.
DEFAULT_LR_SCALES: dict[str, dict[str, float]] = {
    "gnj": {"z_log_sigma2": 10.0},
    "ghs": {"scale_group_mu": 10.0, "scale_group_log_sigma2": 10.0, "scale_global_mu": 10.0},
}


def _magnitude_config():
    from bayescomp.magnitude import MagnitudeConfig

    return MagnitudeConfig


def _self_config():
    from bayescomp.selfcompress.procedure import SelfCompressionConfig

    return SelfCompressionConfig


#: Methods that are not a prior of :data:`PRIORS`: their config class (loaded lazily) and their own run path.
NON_PRIOR_METHODS = {"magnitude": _magnitude_config, "self": _self_config}


#: Settings that only affect what happens after Bayesian training; changing them reuses the trained posterior.
POST_TRAINING_FIELDS = {"compress", "finetune", "latency", "plots"}


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``run.json`` so the run can be repeated from its record."""

    model: str = "lenet300"
    data: str = "mnist"
    method: str = "gnj"
    seed: int = 0
    data_dir: str | None = None
    val_size: int = 5000
    train_subset: int | None = None
    test_subset: int | None = None
    dense: TrainConfig | None = None
    bayes: TrainConfig | None = None
    finetune: TrainConfig | None = None
    prior: dict[str, Any] = field(default_factory=dict)
    compress: CompressConfig = field(default_factory=CompressConfig)
    latency: bool = True
    plots: bool = True
    #: start from the dense weights shipped with the package (:mod:`bayescomp.models.pretrained`) instead of
    #: training the dense model; they were trained on one split, so the run must use the same split.
    pretrained: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int) or self.val_size < 1:
            raise ValueError(f"--val-size must be an integer >= 1 (the threshold search and the per-epoch "
                             f"validation need examples), got {self.val_size!r}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(sorted(MODELS))}")
        if self.method not in NON_PRIOR_METHODS and self.method not in PRIORS:
            raise ValueError(f"unknown method/prior {self.method!r}; known: "
                             f"{', '.join([*sorted(PRIORS), *NON_PRIOR_METHODS])}")
        dense, bayes = DEFAULT_SCHEDULES.get(self.model, (TrainConfig(), TrainConfig()))
        self.dense = _as(TrainConfig, self.dense) or TrainConfig(**{**asdict(dense), "seed": self.seed})
        self.bayes = _as(TrainConfig, self.bayes) or TrainConfig(
            **{**asdict(bayes), "seed": self.seed, "lr_scales": dict(DEFAULT_LR_SCALES.get(self.method, {}))})
        # magnitude pruning is nothing without fine-tuning: 10 epochs unless the caller says otherwise
        self.finetune = _as(TrainConfig, self.finetune) or TrainConfig(
            epochs=10 if self.method == "magnitude" else 0, lr=1e-3, lr_schedule="cosine", seed=self.seed)
        self.compress = _as(CompressConfig, self.compress) or CompressConfig()
        if self.method in NON_PRIOR_METHODS:
            self.prior = asdict(NON_PRIOR_METHODS[self.method]()(**(dict(self.prior) if self.prior else {})))
        else:
            self.prior = asdict(make_config(self.method, dict(self.prior) if self.prior else None))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(**d)


def _as(cls, value):
    return cls(**value) if isinstance(value, dict) else value


def cache_dir() -> Path:
    return Path(os.environ.get("BAYESCOMP_CACHE", Path.home() / ".cache" / "bayescomp"))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_data(config: RunConfig) -> DataBundle:
    return load_dataset(config.data, config.data_dir, val_size=config.val_size, seed=config.seed,
                        train_subset=config.train_subset, test_subset=config.test_subset)


def build_dense(config: RunConfig, data: DataBundle) -> nn.Sequential:
    return create_model(config.model, data.num_classes, data.input_shape, data.mean, data.std)


def dense_model(config: RunConfig, data: DataBundle, log=print, progress: bool = True,
                device: str | None = None, amp: bool = False) -> nn.Sequential:
    """Train the plain network, or reuse the cached one trained with the same settings.

    Data-parallel (torchrun): the ranks train it together; only rank 0 writes the cache, and a cache entry is
    used only if every rank could read it, so that all ranks take the same branch.
    """
    if config.pretrained:
        return _pretrained_dense(config, data, log)
    key = json.dumps({"model": config.model, "data": config.data, "dense": asdict(config.dense),
                      "val_size": config.val_size, "train_subset": config.train_subset}, sort_keys=True)
    path = cache_dir() / "dense" / f"{config.model}_{config.data}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    seed_everything(config.seed)
    model = build_dense(config, data)
    loaded = False
    if path.exists():
        try:
            model.load_state_dict(safe_torch_load(path, path, "cached dense model"))  # never runs code
            loaded = True
        except Exception as error:  # noqa: BLE001 - a bad cache entry is retrained, never trusted
            warnings.warn(f"{error}; not used, the dense model is retrained and the cache entry replaced",
                          stacklevel=2)
            log(f"cached dense model {path} not used ({error}); retraining it")
    if dist_utils.all_true(loaded):
        log(f"reusing cached dense model {path}")
        return model
    if loaded:  # another rank could not read it: start from the same fresh model as that rank
        seed_everything(config.seed)
        model = build_dense(config, data)
    log(f"training the dense {config.model} on {config.data} ({config.dense.epochs} epochs)")
    fit(model, data, config.dense, checkpoint_path=path.with_suffix(".ckpt"), progress=progress, log=log,
        device=device, amp=amp)
    if dist_utils.is_main():
        atomic_torch_save(model.state_dict(), path)
    dist_utils.barrier()
    return model


def _pretrained_dense(config: RunConfig, data: DataBundle, log) -> nn.Module:
    """The shipped dense weights, after checking that the run's validation split is the one they never saw."""
    manifest = read_manifest(config.model, config.data)
    split = (manifest.get("val_size"), manifest.get("split_seed"))
    if split != (config.val_size, config.seed) or config.train_subset is not None:
        raise ValueError(
            f"--pretrained: the shipped {config.model}/{config.data} weights were trained with val_size "
            f"{split[0]} and split seed {split[1]} (full training split); this run uses val_size {config.val_size}, "
            f"seed {config.seed}, train_subset {config.train_subset}, so its validation images could be ones the "
            "weights were trained on. Use the same split or train the dense model (drop --pretrained).")
    model = build_dense(config, data)
    load_pretrained(model, config.model, config.data)
    log(f"dense model: shipped pretrained weights for {config.model}/{config.data} "
        f"(test error {manifest['test_error_pct']:.2f} % when trained; {manifest['command']})")
    return model


def finetune_aware_compress(model: nn.Module, data: DataBundle, config: RunConfig,
                            log=print) -> CompressionResult:
    """Pick the pruning level by the validation error *after* fine-tuning (see ``CompressConfig.finetune_search``).

    The greedy search runs with a wide tolerance to list candidate plans from mild to severe; a bisection along
    them fine-tunes each probed candidate (``config.finetune``) and keeps the most compressed one whose validation
    error is within ``tolerance_pct`` points of the unpruned posterior mean's (the reference of the plain search;
    the dense model's is not used because fine-tuning a pruned posterior rarely returns to it). Only the
    validation split is used.
    """
    from dataclasses import replace

    from bayescomp.compress.search import thresholds_for_counts

    wide = compress(model, data.val, replace(config.compress, tolerance_pct=config.compress.search_range_pct))
    path = wide.search_path
    budget = wide.base_val_error_pct + config.compress.tolerance_pct
    probes: dict[int, float] = {}

    def finetuned_val_error(k: int) -> float:
        thresholds = thresholds_for_counts(wide.log_alpha, path[k]["pruned"])
        candidate = compress(model, data.val, replace(config.compress, thresholds=thresholds))
        finetune_keeping_zeros(candidate.model, data, config.finetune, None, False, lambda *_: None)
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
    result = compress(model, data.val, replace(config.compress, thresholds=chosen))
    result.search_path = [dict(p, finetuned_val_error_pct=probes.get(i)) for i, p in enumerate(path)]
    result.base_val_error_pct = wide.base_val_error_pct
    return result


def finetune_keeping_zeros(model: nn.Module, data: DataBundle, config: TrainConfig, checkpoint: Path | None,
                           progress: bool, log) -> None:
    """Fine-tune the pruned plain model in place; weights that are zero (per-weight pruning: Sparse VD, Turbo-VBI)
    stay zero (a fixed ``torch.nn.utils.prune`` mask during training, made permanent afterwards)."""
    from bayescomp.magnitude import _apply_masks, _make_permanent

    layers = [m for m in prunable_modules(model) if bool((m.weight == 0).any())]
    _apply_masks(layers, [m.weight.detach() != 0 for m in layers])
    try:
        fit(model, data, config, checkpoint_path=checkpoint, progress=progress, log=log)
    finally:
        _make_permanent(layers)


def save_compressed(result: CompressionResult, path: Path, metadata: dict[str, Any]) -> int:
    quant = {}
    modules = packed_leaves(result.quantized_model)
    layers = prunable_modules(result.quantized_model)
    for layer, precision in zip(layers, result.precisions):
        if precision.total_bits >= 32:  # float32 layers (e.g. magnitude pruning) are stored as they are
            continue
        quant[next(i for i, m in enumerate(modules) if m is layer)] = QuantSpec(step=precision.step)
    return save_packed(result.quantized_model, path, quant, metadata)


def run(config: RunConfig, run_dir: str | Path, log=print, progress: bool = True, restart: bool = False,
        command: str | None = None, device: str | None = None, amp: bool = False) -> dict[str, Any]:
    """Run the whole job into ``run_dir`` and return the report (also written as report.json / report.md).

    Under torchrun (``bayescomp run --nproc N``) the ranks train data-parallel; rank 0 searches the thresholds,
    every rank reads its masks from its own posterior with them and they must agree (``report["ddp"]``), then
    rank 0 alone compresses, writes the files and sends the report to the other ranks, which return it too.

    ``device`` / ``amp``: where the dense and Bayesian training run and whether they use bfloat16 autocast (see
    :func:`bayescomp.train.fit`); compression, measurement and the report always run on the CPU. They do not change
    what a run means, so they are not part of ``run.json``; the report records them under ``training``.
    """
    started = time.perf_counter()
    dist_utils.init_from_env()
    if dist_utils.is_distributed() and config.method in NON_PRIOR_METHODS:
        raise ValueError(f"--method {config.method} does not support data-parallel training (--nproc > 1); "
                         f"use one of the priors: {', '.join(sorted(PRIORS))}")
    if not dist_utils.is_main():
        log = lambda *_: None  # noqa: E731
    run_dir = Path(run_dir)
    lock = runlock.acquire(run_dir, log) if dist_utils.is_main() else None  # one writer per run directory
    try:
        return _run(config, run_dir, log, progress, restart, command, device, amp, started)
    finally:
        if lock is not None:
            runlock.release(lock)


def _run(config: RunConfig, run_dir: Path, log, progress: bool, restart: bool, command: str | None,
         device: str | None, amp: bool, started: float) -> dict[str, Any]:
    if dist_utils.is_main():
        _prepare_run_dir(config, run_dir, restart, log)
    dist_utils.barrier()
    data = load_data(config)
    log(f"data: {config.data} train {len(data.train)}, val {len(data.val)}, test {len(data.test)}")
    _check_thresholds_fit(config, data)
    dense = dense_model(config, data, log, progress, device, amp)
    dense_eval = evaluate(dense, data.test)
    log(f"dense test error {dense_eval['error_pct']:.2f}%")

    if config.method == "magnitude":
        return _run_magnitude(config, run_dir, data, dense, dense_eval, started, log, progress, command)
    if config.method == "self":
        return _run_self(config, run_dir, data, dense, dense_eval, started, log, progress, command)
    seed_everything(config.seed)
    model = bayesify(dense, config.method, config.prior)
    log(f"Bayesian training ({config.method}, {config.bayes.epochs} epochs)")
    history = fit(model, data, config.bayes, checkpoint_path=run_dir / "bayes.ckpt", progress=progress, log=log,
                  device=device, amp=amp)
    training = {"device": str(device or "cpu"), "amp": amp}
    if dist_utils.is_distributed():
        return _finish_distributed(config, run_dir, data, dense, dense_eval, model, history, started, log,
                                   progress, command, training)
    return _finish(config, run_dir, data, dense, dense_eval, model, history, started, log, progress, command,
                   training=training)


def _check_thresholds_fit(config: RunConfig, data: DataBundle) -> None:
    """A list of thresholds must match the model's prunable layers: checked before any training."""
    thresholds = config.compress.thresholds
    if not isinstance(thresholds, (list, tuple)):
        return
    from bayescomp.compress.chain import UnsupportedModelError, build_chain
    from bayescomp.compress.graph import DependencyGraph

    dense = build_dense(config, data)
    try:
        layers = len(build_chain(dense).layers)
    except UnsupportedModelError:  # graph models: one threshold per coupled channel group of the Bayesian model
        if config.method not in PRIORS:
            return
        try:
            graph = DependencyGraph(bayesify(dense, config.method, config.prior), data.val.example())
            layers = len(graph.prunable_groups)
        except UnsupportedModelError:
            return  # not traceable: compress names the problem
    check_threshold_count(thresholds, layers, config.model)  # the RNG is reseeded before the dense model


def _prepare_run_dir(config: RunConfig, run_dir: Path, restart: bool, log) -> None:
    """Check that ``run_dir`` holds no run with other settings (or clear it with ``restart``); write run.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / "run.json"
    if record_path.exists() and not restart:
        previous = json.loads(record_path.read_text())
        current = json.loads(json.dumps(config.to_dict()))
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if set(changed) - POST_TRAINING_FIELDS:
            raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(changed)} differ, see "
                             f"{record_path}); choose another --run-dir or pass --restart to overwrite it")
        if changed:
            log(f"reusing the trained posterior in {run_dir}; redoing the steps after training ({', '.join(changed)})")
            (run_dir / "finetune.ckpt").unlink(missing_ok=True)
            (run_dir / "finetune.ckpt.prev").unlink(missing_ok=True)
    if restart:
        for name in ("bayes.ckpt", "bayes.ckpt.prev", "finetune.ckpt", "finetune.ckpt.prev"):
            (run_dir / name).unlink(missing_ok=True)
    record_path.write_text(json.dumps(config.to_dict(), indent=2))


def _finish_distributed(config: RunConfig, run_dir: Path, data: DataBundle, dense: nn.Module, dense_eval: dict,
                        model: nn.Module, history, started: float, log, progress: bool,
                        command: str | None, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """After data-parallel training: rank 0 searches the thresholds, every rank derives its masks from its own
    posterior with them, the masks must agree; then rank 0 compresses and reports alone (``local_only``) and
    every rank returns rank 0's report."""
    result = None
    if dist_utils.is_main():
        with dist_utils.local_only():
            result = _compress(config, data, model, log, progress)
    thresholds = dist_utils.broadcast(result.thresholds if result is not None else None)
    digest = dist_utils.mask_digest(model, thresholds, data.val.example())
    ddp = {"ranks": dist_utils.world_size(), "same_masks": dist_utils.all_equal(digest),
           "backend": dist_utils.backend(), "mask_digest": digest}
    if not ddp["same_masks"]:
        raise RuntimeError(f"the ranks' posteriors give different masks with thresholds {thresholds}: "
                           "data-parallel training went out of sync")
    report = None
    if dist_utils.is_main():
        with dist_utils.local_only():
            report = _finish(config, run_dir, data, dense, dense_eval, model, history, started, log, progress,
                             command, result=result, ddp=ddp, training=training)
    return dist_utils.broadcast(report)


def _compress(config: RunConfig, data: DataBundle, model: nn.Module, log, progress: bool) -> CompressionResult:
    if config.compress.finetune_search and config.finetune.epochs > 0:
        return finetune_aware_compress(model, data, config, log)
    return compress(model, data.val, config.compress, log=log if progress else None)


def _finish(config: RunConfig, run_dir: Path, data: DataBundle, dense: nn.Module, dense_eval: dict,
            model: nn.Module, history, started: float, log, progress: bool, command: str | None,
            result: CompressionResult | None = None, ddp: dict[str, Any] | None = None,
            training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compress the trained posterior (unless ``result`` is given), fine-tune, pack, measure and report: the
    single-process tail of :func:`run`; ``ddp`` is recorded in the report."""
    from bayescomp.report import build_report, write_report  # local: report imports plotting lazily

    bayes_eval = evaluate(model, data.test)
    log(f"Bayesian posterior-mean test error {bayes_eval['error_pct']:.2f}%; compressing")
    if result is None:
        result = _compress(config, data, model, log, progress)
    before_finetune = None
    if config.finetune.epochs > 0:
        before_finetune = evaluate(result.model, data.test)["error_pct"]
        log(f"pruned test error before fine-tuning {before_finetune:.2f}%")
        log(f"fine-tuning the pruned model ({config.finetune.epochs} epochs, deterministic, lr {config.finetune.lr})")
        finetune_keeping_zeros(result.model, data, config.finetune, run_dir / "finetune.ckpt", progress, log)
        result.model.eval()
        result.quantized_model = quantize_model(result.model, result.precisions)
    metadata = {"run": config.to_dict(), "architecture_kept": result.architecture_kept}
    file_bytes = save_compressed(result, run_dir / "compressed.bcz", metadata)
    report = build_report(config, data, dense, model, result, history, dense_eval, bayes_eval,
                          file_bytes, run_dir, started, command or " ".join(sys.argv), git_commit())
    report["test_error_pct_pruned_before_finetune"] = before_finetune
    if ddp is not None:
        report["ddp"] = ddp
    report["training"] = training or {"device": "cpu", "amp": False}
    write_report(report, run_dir, model=model, result=result, data=data, plots=config.plots)
    return report


def _run_magnitude(config: RunConfig, run_dir: Path, data: DataBundle, dense: nn.Sequential, dense_eval: dict,
                   started: float, log, progress: bool, command: str | None) -> dict[str, Any]:
    """The non-Bayesian baseline: gradual magnitude pruning with fine-tuning, then the same shrinking, packing and
    report as every other method. The fine-tuning rounds are short and are redone if the run is interrupted."""
    import copy

    from bayescomp.magnitude import MagnitudeConfig, magnitude_compress, prune_and_finetune
    from bayescomp.report import build_report, write_report
    from bayescomp.train import TrainHistory

    settings = MagnitudeConfig(**config.prior)
    model = copy.deepcopy(dense)
    seed_everything(config.seed)
    log(f"magnitude pruning to sparsity {settings.sparsity} ({'structured' if settings.structured else 'unstructured'}, "
        f"{settings.scope}), {settings.rounds} rounds, {config.finetune.epochs} fine-tuning epochs")
    masks = prune_and_finetune(model, data, settings, config.finetune, log=log, progress=progress)
    result = magnitude_compress(model, masks)
    metadata = {"run": config.to_dict(), "architecture_kept": result.architecture_kept}
    file_bytes = save_compressed(result, run_dir / "compressed.bcz", metadata)
    report = build_report(config, data, dense, None, result, TrainHistory(), dense_eval, None,
                          file_bytes, run_dir, started, command or " ".join(sys.argv), git_commit())
    report["epochs"] = 0
    report["test_error_pct_pruned_before_finetune"] = None
    write_report(report, run_dir, model=None, result=result, data=data, plots=config.plots)
    return report


def _run_self(config: RunConfig, run_dir: Path, data: DataBundle, dense: nn.Sequential, dense_eval: dict,
              started: float, log, progress: bool, command: str | None) -> dict[str, Any]:
    """Self-compression (Carannante et al. 2020): train the density-propagating twin, delete kernels by norm while
    the validation error allows, retrain, repeat; then the shared shrinking path and report. The kept kernels'
    posterior variances are saved in the file's metadata (``variance_head``)."""
    from dataclasses import replace

    from bayescomp.magnitude import magnitude_compress
    from bayescomp.report import build_report, write_report
    from bayescomp.selfcompress.procedure import (
        SelfCompressionConfig, dense_shaped_posterior_mean, density_twin, self_compress, variance_head,
    )

    settings = SelfCompressionConfig(**config.prior)
    seed_everything(config.seed)
    model = density_twin(dense, settings)
    log(f"self-compression: training the density-propagating network ({settings.covariance} covariance, "
        f"{settings.likelihood} likelihood, {config.bayes.epochs} epochs)")
    history = fit(model, data, config.bayes, checkpoint_path=run_dir / "bayes.ckpt", progress=progress, log=log,
                  objective=settings.objective(len(data.train)))
    bayes_eval = evaluate(model, data.test)
    log(f"posterior-mean test error {bayes_eval['error_pct']:.2f}%; deleting kernels (tolerance "
        f"{settings.tolerance_pct} points of validation error)")
    retrain = replace(config.bayes, epochs=settings.retrain_epochs, lr=config.bayes.lr / 10, lr_schedule="constant",
                      kl_warmup_epochs=0.0)
    small, kept, rounds = self_compress(model, data, settings, retrain, log=log)
    plain = dense_shaped_posterior_mean(dense, small, kept)
    result = magnitude_compress(plain, [torch.ones_like(m.weight) for m in prunable_modules(plain)])
    metadata = {"run": config.to_dict(), "architecture_kept": result.architecture_kept,
                "variance_head": variance_head(small)}
    file_bytes = save_compressed(result, run_dir / "compressed.bcz", metadata)
    report = build_report(config, data, dense, None, result, history, dense_eval, bayes_eval,
                          file_bytes, run_dir, started, command or " ".join(sys.argv), git_commit())
    report["test_error_pct_pruned_before_finetune"] = None
    report["self_compression_rounds"] = rounds
    report["test_error_pct_density"] = evaluate(small, data.test)["error_pct"]
    write_report(report, run_dir, model=None, result=result, data=data, plots=config.plots)
    return report
