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
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from bayescomp import distributed as dist_utils
from bayescomp import runlock
from bayescomp.bayesify import bayesify
from bayescomp.checkpoint import atomic_torch_save, safe_torch_load
from bayescomp.compress import CompressConfig, CompressionResult
from bayescomp.compress.digest import mask_digest
from bayescomp.loop import with_field_defaults
from bayescomp.data import DataBundle
from bayescomp.data_sources import data_identity, data_slug, load_data_source, make_bundle
from bayescomp.methods import Method, RunContext, get_method, list_methods
from bayescomp.methods.finetune import finetune_aware_compress, finetune_keeping_zeros  # noqa: F401  (re-exported)
from bayescomp.methods.runner import MethodOutcome, compress_and_finetune, prepare_and_train
from bayescomp.models import create_model
from bayescomp.models.pretrained import load_pretrained, read_manifest
from bayescomp.noise import effective_noise_source
from bayescomp.report import build_report, write_report
from bayescomp.run_config import (  # noqa: F401  (re-exported: bayescomp.pipeline.RunConfig, ...)
    DEFAULT_LR_SCALES, DEFAULT_SCHEDULES, POST_TRAINING_FIELDS, ModelRunConfig, RunConfig,
)
from bayescomp.train import TrainConfig, evaluate, fit, seed_everything
from bayescomp.validate import check_threshold_count

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
    """The run's splits: a built-in data set, or a folder of images (one sub-folder per class)."""
    return load_data_source(config.data, config.data_dir, val_size=config.val_size, seed=config.seed,
                            train_subset=config.train_subset, test_subset=config.test_subset,
                            image_size=config.image_size)


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
    key = json.dumps({"model": config.model, "data": data_identity(config.data), "dense": asdict(config.dense),
                      "val_size": config.val_size, "train_subset": config.train_subset,
                      **({"image_size": config.image_size} if config.image_size else {})}, sort_keys=True)
    stem = f"{config.model}_{data_slug(config.data)}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    path = cache_dir() / "dense" / f"{stem}.pt"
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


def save_compressed(result: CompressionResult, path: Path, metadata: dict[str, Any]) -> int:
    """Write ``result`` as a packed file (same as ``result.save(path, metadata)``); returns its size in bytes."""
    return result.save(path, metadata)


def run(config: RunConfig, run_dir: str | Path, log=print, progress: bool = True, restart: bool = False,
        command: str | None = None, device: str | None = None, amp: bool = False,
        cuda_graphs: bool = False) -> dict[str, Any]:
    """Run the whole job into ``run_dir`` and return the report (also written as report.json / report.md).

    Under torchrun (``bayescomp run --nproc N``) the ranks train data-parallel; rank 0 searches the thresholds,
    every rank reads its masks from its own posterior with them and they must agree (``report["ddp"]``), then
    rank 0 alone compresses, writes the files and sends the report to the other ranks, which return it too.

    ``device`` / ``amp`` / ``cuda_graphs``: where the dense and Bayesian training, the threshold search's
    evaluations and the fine-tuning run, whether training uses bfloat16 autocast, and whether the Bayesian step is
    replayed as a CUDA graph (see :func:`bayescomp.train.fit`); the rest of compression, measurement and the report
    run on the CPU. They do not change what a run means, so they are not part of ``run.json``; the report records
    them under ``training``.
    """
    started = time.perf_counter()
    dist_utils.init_from_env()
    if dist_utils.is_distributed() and not get_method(config.method).distributed:
        able = ", ".join(name for name in list_methods() if get_method(name).distributed)
        raise ValueError(f"--method {config.method} does not support data-parallel training (--nproc > 1); "
                         f"use one of: {able}")
    if not dist_utils.is_main():
        log = lambda *_: None  # noqa: E731
    run_dir = Path(run_dir)
    lock = runlock.acquire(run_dir, log) if dist_utils.is_main() else None  # one writer per run directory
    try:
        return _run(config, run_dir, log, progress, restart, command, device, amp, started, cuda_graphs)
    finally:
        if lock is not None:
            runlock.release(lock)


def _run(config: RunConfig, run_dir: Path, log, progress: bool, restart: bool, command: str | None,
         device: str | None, amp: bool, started: float, cuda_graphs: bool = False) -> dict[str, Any]:
    if dist_utils.is_main():
        _prepare_run_dir(config, run_dir, restart, log)
    dist_utils.barrier()
    data = load_data(config)
    log(f"data: {config.data} train {len(data.train)}, val {len(data.val)}, test {len(data.test)}")
    _check_thresholds_fit(config, data)
    dense = dense_model(config, data, log, progress, device, amp)
    dense_eval = evaluate(dense, data.test)
    log(f"dense test error {dense_eval['error_pct']:.2f}%")

    method = get_method(config.method)
    ctx = RunContext(config=config, data=data, dense=dense, run_dir=run_dir,
                     settings=method.make_settings(config.prior), log=log, progress=progress, device=device, amp=amp,
                     cuda_graphs=cuda_graphs)
    outcome = prepare_and_train(method, ctx)
    training = {"device": str(device or "cpu"), "amp": amp, **({"cuda_graphs": True} if cuda_graphs else {})}
    if dist_utils.is_distributed():
        return _finish_distributed(method, ctx, outcome, dense_eval, started, command, training)
    return _finish(method, ctx, outcome, dense_eval, started, command, training=training)


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
        if get_method(config.method).needs != "prior":
            return
        try:
            graph = DependencyGraph(bayesify(dense, config.method, config.prior), data.val.example())
            layers = len(graph.prunable_groups)
        except UnsupportedModelError:
            return  # not traceable: compress names the problem
    check_threshold_count(thresholds, layers, config.model)  # the RNG is reseeded before the dense model


def changed_settings(previous: dict, current: dict) -> list[str]:
    """The top-level settings that differ between two ``run.json`` records; a change confined to the method's
    post-training settings (:attr:`~bayescomp.methods.Method.post_training_settings`, e.g. self-compression's
    tolerance) is listed as ``prior.<field>`` instead of ``prior``."""
    previous, current = _train_defaults_filled(previous), _train_defaults_filled(current)
    changed = {k for k in set(previous) | set(current) if previous.get(k) != current.get(k)}
    if "prior" in changed and "method" not in changed:
        before, after = previous.get("prior") or {}, current.get("prior") or {}
        keys = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        if keys <= set(get_method(current["method"]).post_training_settings):
            changed = (changed - {"prior"}) | {f"prior.{k}" for k in keys}
    return sorted(changed)


TRAIN_SECTIONS = ("dense", "bayes", "finetune")  # the TrainConfig sections of a run.json


def _train_defaults_filled(record: dict) -> dict:
    """``record`` with each training section's and the compress section's missing fields set to their config's
    defaults, so a run directory written before a field existed (e.g. ``optimizer``, ``channel_score``) still
    matches a run that leaves it at its default."""
    defaults = {**{k: TrainConfig() for k in TRAIN_SECTIONS}, "compress": CompressConfig()}
    return {k: (with_field_defaults(defaults[k], v) if k in defaults else v) for k, v in record.items()}


def _prepare_run_dir(config: RunConfig, run_dir: Path, restart: bool, log) -> None:
    """Check that ``run_dir`` holds no run with other settings (or clear it with ``restart``); write run.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / "run.json"
    if record_path.exists() and not restart:
        previous = json.loads(record_path.read_text())
        current = json.loads(json.dumps(config.to_dict()))
        changed = changed_settings(previous, current)
        if {k for k in changed if not k.startswith("prior.")} - POST_TRAINING_FIELDS:
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


def _finish_distributed(method: Method, ctx: RunContext, outcome: MethodOutcome, dense_eval: dict, started: float,
                        command: str | None, training: dict[str, Any]) -> dict[str, Any]:
    """After data-parallel training: rank 0 searches the thresholds, every rank derives its masks from its own
    posterior with them, the masks must agree; then rank 0 compresses and reports alone (``local_only``) and
    every rank returns rank 0's report."""
    result = None
    if dist_utils.is_main():
        with dist_utils.local_only():
            result = method.compress(outcome.model, ctx)
    thresholds = dist_utils.broadcast(result.thresholds if result is not None else None)
    compress_config = ctx.config.compress
    digest = mask_digest(outcome.model, thresholds, ctx.data.val.example(), compress_config.graph_reduce,
                         compress_config.channel_score)
    ddp = {"ranks": dist_utils.world_size(), "same_masks": dist_utils.all_equal(digest),
           "backend": dist_utils.backend(), "mask_digest": digest}
    if not ddp["same_masks"]:
        raise RuntimeError(f"the ranks' posteriors give different masks with thresholds {thresholds}: "
                           "data-parallel training went out of sync")
    report = None
    if dist_utils.is_main():
        with dist_utils.local_only():
            report = _finish(method, ctx, outcome, dense_eval, started, command, result=result, ddp=ddp,
                             training=training)
    return dist_utils.broadcast(report)


def _finish(method: Method, ctx: RunContext, outcome: MethodOutcome, dense_eval: dict, started: float,
            command: str | None, result: CompressionResult | None = None, ddp: dict[str, Any] | None = None,
            training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compress the trained model (unless ``result`` is given), fine-tune, pack, measure and report: the
    single-process tail of :func:`run`; ``ddp`` is recorded in the report."""
    config, data, run_dir = ctx.config, ctx.data, ctx.run_dir
    bayes_eval = None
    if method.needs != "none":
        bayes_eval = evaluate(outcome.model, data.test)
        ctx.log(f"trained model (posterior mean) test error {bayes_eval['error_pct']:.2f}%; compressing")
    compress_and_finetune(method, ctx, outcome, result, checkpoint=run_dir / "finetune.ckpt")
    result = outcome.result
    metadata = {"run": config.to_dict(), "architecture_kept": result.architecture_kept, **ctx.metadata}
    file_bytes = result.save(run_dir / "compressed.bcz", metadata)
    posterior = outcome.model if method.posterior_in_report else None
    report = build_report(config, data, ctx.dense, posterior, result, outcome.history, dense_eval, bayes_eval,
                          file_bytes, run_dir, started, command or " ".join(sys.argv), git_commit())
    report["test_error_pct_pruned_before_finetune"] = outcome.test_error_pct_before_finetune
    report["finetune_validation"] = outcome.finetune_validation
    report["noise_source"] = effective_noise_source()
    report["compiled_step"] = any(e.get("compiled_step") for e in getattr(outcome.history, "epochs", None) or [])
    report.update(ctx.extras)
    report.update(method.report_extras(posterior, ctx))
    if ddp is not None:
        report["ddp"] = ddp
    report["training"] = training or {"device": "cpu", "amp": False}
    write_report(report, run_dir, model=posterior, result=result, data=data, plots=config.plots)
    return report


def compress_model(model: nn.Module, data: DataBundle | tuple, method: str = "gnj", *, epochs: int | None = None,
                   prior: dict[str, Any] | None = None, bayes: TrainConfig | None = None,
                   finetune: TrainConfig | None = None, compress: CompressConfig | None = None, seed: int = 0,
                   run_dir: str | Path | None = None, log=print, progress: bool = False,
                   device: str | None = None, amp: bool = False,
                   filter_fn: Callable[[nn.Module, str], bool] | None = None,
                   skip: Sequence[str] = ()) -> CompressionResult:
    """Compress a trained ``nn.Module`` (a zoo model or your own) with a registered method; the one-call verb.

    The method's hooks run as in :func:`run` (prepare -> train -> compress -> optional fine-tuning), on ``data``
    (its validation split chooses the thresholds; the test split is not read). ``model`` is not modified.

    Args:
        model: the trained dense network; its weights initialise the posterior means.
        data: train / val / test splits: :func:`bayescomp.load_dataset`, :func:`bayescomp.load_image_folder`,
            :func:`bayescomp.make_bundle`, or a tuple ``(train, val)`` / ``(train, val, test)`` of your own
            ``Dataset``s or ``DataLoader``s (streamed; see :mod:`bayescomp.data_sources`).
        method: a name of :func:`bayescomp.list_methods` (or an alias).
        epochs: Bayesian training epochs (shortcut for ``bayes``'s; default 30).
        prior: the method's settings as a dict of its config dataclass's fields.
        bayes / finetune / compress: full training, fine-tuning and compression settings.
        run_dir: where training checkpoints go (a rerun resumes); ``None``: no checkpoints.
        filter_fn / skip: which layers become Bayesian (see :func:`bayescomp.bayesify`): ``filter_fn(module,
            name)`` False keeps a Linear/Conv2d plain, ``skip`` names modules (or parameters) left untouched.

    Returns the :class:`~bayescomp.compress.CompressionResult`: ``result.quantized_model`` is the small plain model,
    ``result.save(path)`` writes it, ``result.extras["history"]`` holds the training history.
    """
    if isinstance(data, (tuple, list)):
        data = make_bundle(*data)
    config = ModelRunConfig(method=method, seed=seed, bayes=bayes, finetune=finetune,
                            compress=compress or CompressConfig(), prior=dict(prior or {}))
    if epochs is not None:
        config.bayes = replace(config.bayes, epochs=epochs)
    spec = get_method(config.method)
    ctx = RunContext(config=config, data=data, dense=model, run_dir=None if run_dir is None else Path(run_dir),
                     settings=spec.make_settings(config.prior), log=log, progress=progress, device=device, amp=amp,
                     filter_fn=filter_fn, skip=tuple(skip))
    if ctx.run_dir is not None:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
    outcome = prepare_and_train(spec, ctx)
    checkpoint = None if ctx.run_dir is None else ctx.run_dir / "finetune.ckpt"
    compress_and_finetune(spec, ctx, outcome, checkpoint=checkpoint)
    result = outcome.result
    result.extras.update(ctx.extras)
    result.extras.update(spec.report_extras(outcome.model if spec.posterior_in_report else None, ctx))
    result.extras.update({"history": outcome.history.epochs, "method": spec.name, "metadata": ctx.metadata,
                          "test_error_pct_pruned_before_finetune": outcome.test_error_pct_before_finetune,
                          "finetune_validation": outcome.finetune_validation})
    return result
