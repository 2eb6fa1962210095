"""Trainer for plain and Bayesian models: progress bar, seeds, atomic checkpoints, resume, NaN guard.

One loop serves both: for a plain model the KL is zero and the loss is the cross-entropy. A run interrupted at
any point resumes from the last completed epoch and ends exactly as an uninterrupted run would (the data order
of epoch e comes from a generator seeded with (seed, e), and the global RNG state used for the posterior noise is
checkpointed with the weights).

Under ``torchrun`` (see :mod:`bayescomp.distributed`) the same loop trains data-parallel: ``batch_size`` stays the
global batch, every rank draws the same global batches and takes its contiguous slice, and the gradient equals the
single-process one (see :func:`_train_epoch`).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bayescomp import compiled_step
from bayescomp import distributed as dist_utils
from bayescomp.checkpoint import restore_training_state, training_state  # noqa: F401  (re-exported)
from bayescomp.cuda_graphs import WARMUP_STEPS, GraphedStep, graph_unsafe_layers
from bayescomp.data import DataBundle
from bayescomp.data_sources import steps_per_epoch as split_steps
from bayescomp.distill import DistillationPair, distillation_objective
from bayescomp.evaluation import device_of as _device_of
from bayescomp.evaluation import evaluate  # noqa: F401  (re-exported: bayescomp.train.evaluate)
from bayescomp.mixed_precision import (  # noqa: F401  (re-exported: bayescomp.train.native_bf16, ...)
    PRECISIONS, AutocastForward, native_bf16, resolve_precision,
)
from bayescomp.loop import NAN_ADVICE, NonFiniteLossError, StepLoss, run_epoch, train_epochs  # noqa: F401 (re-exported)
from bayescomp.objective import kl_weight, variational_loss
from bayescomp.priors.base import bayesian_layers


@dataclass
class TrainConfig:
    """Options of one training phase (saved with the run).

    Args:
        epochs: passes over the training split.
        batch_size: mini-batch size.
        lr: learning rate (of ``optimizer``).
        lr_schedule: ``"constant"``, ``"cosine"`` (to 0 at the end) or ``"linear"`` (to 0 at the end).
        kl_warmup_epochs: KL weight rises linearly from 0 to 1 over this many epochs (0: no warm-up).
        seed: seeds data order, initial noise and everything else random.
        weight_decay: L2 penalty (plain training and fine-tuning; the prior regularises Bayesian training).
        optimizer: ``"adam"`` (default: every Bayesian and MNIST recipe) or ``"sgd"`` (momentum 0.9, Nesterov),
            the optimiser CIFAR ResNets are trained with (``benchmarks/pretrain.py``); offered for fine-tuning a
            pruned ResNet, where Adam without weight decay generalises worse. Not tuned per model here.
        lr_scales: learning-rate multipliers by parameter-name suffix, e.g. ``{"z_log_sigma2": 10}``. The group
            noise log-variances start far below their optimum (-9) and, for groups the data do not need, Adam
            moves them by about ``lr`` per step only; a larger step lets the posterior find the groups it can drop
            in fewer epochs, while weights keep the base rate. ``{}`` is plain Adam on all parameters.
        augment: ``"none"`` or ``"crop_flip"`` (pad-4 random crop and horizontal flip, per example).
        distill: weight alpha of the knowledge-distillation term (:mod:`bayescomp.distill`) when :func:`fit` is
            given a ``teacher``: the loss is ``(1 - alpha) CE + alpha T^2 KL(teacher_T || student_T)``. 0 (default):
            labels only. The pipeline's fine-tuning of a pruned model distils from the run's dense model.
        distill_temperature: the softening temperature T of that term (4, a common choice for CIFAR-sized
            classifiers; not tuned here).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    kl_warmup_epochs: float = 0.0
    seed: int = 0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    lr_scales: dict[str, float] = field(default_factory=dict)
    augment: str = "none"
    distill: float = 0.0
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill (the distillation weight alpha) must be in [0, 1], got {self.distill}")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; use {' or '.join(AUGMENTATIONS)}")


def crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
              rows: slice | None = None) -> torch.Tensor:
    """Random crops of the zero-padded images (same size as the input) and random horizontal flips.

    ``rows``: augment and return only these images, drawing the random numbers for all of them (a data-parallel
    rank's slice of the global batch then gets exactly the crops a single process would give it).
    """
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    if rows is not None:
        images, offsets, flips = images[rows], offsets[rows], flips[rows]
        n = images.shape[0]
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    out = torch.empty_like(images)
    for i in range(n):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top:top + height, left:left + width]
        out[i] = crop.flip(-1) if bool(flips[i]) else crop
    return out


AUGMENTATIONS = ("none", "crop_flip")
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9  # with Nesterov's correction, as benchmarks/pretrain.py trains the CIFAR ResNets


@dataclass
class TrainHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _lr_factor(schedule: str, epoch: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(total, 1)))
    if schedule == "linear":
        return max(0.0, 1.0 - epoch / max(total, 1))
    raise ValueError(f"unknown lr_schedule {schedule!r}; use constant, cosine or linear")


def make_optimizer(model: nn.Module, config: TrainConfig, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam (fused kernel) or, with ``config.optimizer="sgd"``, SGD with Nesterov momentum, with a parameter group
    per entry of ``config.lr_scales`` that matches something; ``capturable``: Adam's step count kept on the device,
    so a CUDA graph can record the step (SGD keeps no step count)."""
    buckets: dict[str, list[nn.Parameter]] = {"": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            suffix = next((s for s in config.lr_scales if name.endswith(s)), "")
            buckets.setdefault(suffix, []).append(param)
    groups = [{"params": params, "lr": config.lr * config.lr_scales.get(suffix, 1.0)}
              for suffix, params in buckets.items() if params]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True,
                            capturable=capturable)


def fit(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    log: Any = print,
    objective: Any = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    cuda_graphs: bool = False,
    teacher: nn.Module | None = None,
    compile_step: bool | str | None = None,
) -> TrainHistory:
    """Train ``model`` in place on ``data.train``; validate on ``data.val`` after each epoch.

    Args:
        checkpoint_path: where to write a checkpoint after every epoch; if it exists, training resumes from it.
        stop_after_epochs: stop (as if interrupted) after this many epochs of this call (used by tests).
        objective: ``(outputs, labels, model, n_train, kl_scale) -> (loss, nll, kl)``; default
            :func:`bayescomp.objective.variational_loss` (cross-entropy on logits + KL / N). Density-propagating
            models (:mod:`bayescomp.selfcompress`) pass their Gaussian-likelihood ELBO here. Data-parallel
            training needs ``loss = nll + (terms that do not depend on the batch)`` with ``nll`` a per-example mean,
            which holds for every objective of the library.
        device: train on this device (e.g. ``"cuda"``); the model is moved there for training and moved back to
            where it was afterwards. On CUDA the posterior noise comes from the CUDA generator, which checkpoints
            do not hold, so a resumed GPU run is statistically, not bit-for-bit, the same.
        precision: ``"fp32"`` (default here: every caller of the library's loop keeps its measured numerics),
            ``"bf16"`` (the forward's layer products in bfloat16, parameters, variances, KL and loss in float32:
            :class:`AutocastForward`) or ``"auto"`` (bf16 where the CPU has native bf16, :func:`native_bf16`, fp32
            elsewhere; without native support bf16 is emulated and slower). ``bayescomp run`` uses auto for the
            prior methods (measured: benchmarks/results/epoch_cost_*.md, precision_parity_*.md).
        amp: the older switch: ``True`` is ``precision="bf16"``, ``False`` is ``"fp32"``; ``None`` defers to
            ``precision``.
        channels_last: train convolutions in the channels-last memory layout (weights and inputs NHWC; the model
            is returned in the default layout). ``None`` (default): on for CPU training of any model with
            convolutions, Bayesian or not, in bf16 and in fp32 (measured faster in both on the CPUs benchmarked:
            plain fp32 0.68-0.90x, BC-GNJ fp32 0.83-0.88x of the NCHW epoch); the Bayesian layers draw their noise and keep both products in the
            layout of their weights (:func:`bayescomp.priors.fused.in_layout`), so the NHWC convolutions' speed is
            not lost to strided elementwise passes (benchmarks/results/epoch_cost_*.md).
        cuda_graphs: on a CUDA device, replay every full mini-batch's step as one CUDA graph
            (:mod:`bayescomp.cuda_graphs`: small networks' GPU steps are bound by kernel-launch latency). Needs
            layers marked ``graph_safe`` and fp32, single-process training; otherwise the run says why and trains
            eagerly. Off by default.
        teacher: a trained network to distil from (:mod:`bayescomp.distill`) with weight ``config.distill``; it
            is copied and frozen, never changed. Needs ``config.distill > 0`` and the default objective; CUDA graphs
            are not used with it.
        compile_step: compile the training step's forward, objective and KL (:mod:`bayescomp.compiled_step`): True /
            ``"on"``, False / ``"off"``, ``"auto"`` (Bayesian networks without convolutions, runs long enough to
            pay for the compilation), or ``None`` (default): the process setting (``BAYESCOMP_COMPILE``, else auto).

    Under torchrun (``WORLD_SIZE > 1``) the model is wrapped in ``DistributedDataParallel`` for the training
    steps only; ``model`` itself stays unwrapped (hooks, checkpoints). Rank 0 logs and writes the checkpoint.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the checkpoint of the last good epoch is left intact.
    """
    dist_utils.init_from_env()
    distributed = dist_utils.is_distributed()
    if distributed and getattr(data.train, "loader", None) is not None:
        raise ValueError("data-parallel training draws the same seeded global batch on every rank and slices it; "
                         "a DataLoader batches on its own, so pass its Dataset instead (bayescomp.make_bundle)")
    if not dist_utils.is_main():
        log, progress = (lambda *_: None), False
    if (teacher is not None) != (config.distill > 0):
        raise ValueError("distillation needs both a teacher and TrainConfig.distill > 0 "
                         f"(got teacher={'a model' if teacher is not None else None}, distill={config.distill})")
    if teacher is not None:
        if objective is not None:
            raise ValueError("distillation replaces the objective; pass either a teacher or an objective")
        model = DistillationPair(model, teacher)
        objective = distillation_objective(config.distill_temperature, config.distill)
        cuda_graphs = False
    home = _device_of(model)
    place = torch.device(device) if device is not None else home
    chosen = resolve_precision(("bf16" if amp else "fp32") if amp is not None else precision, place.type)
    if channels_last is None:
        channels_last = default_channels_last(model, place.type, chosen)
    model.to(place)
    hook = _to_channels_last(model) if channels_last else None
    try:
        return _fit(model, data, config, checkpoint_path, progress, stop_after_epochs, log, objective, place,
                    chosen == "bf16", distributed, cuda_graphs, compile_step)
    finally:
        model.to(home)
        if hook is not None:
            hook.remove()
            model.to(memory_format=torch.contiguous_format)


def default_channels_last(model: nn.Module, device_type: str, precision: str) -> bool:
    """Whether ``fit(channels_last=None)`` trains ``model`` in NHWC: on the CPU, with at least one convolution.

    Measured (``benchmarks/results/epoch_cost_*.md``, 1 thread): NHWC was faster in every conv-net case, bf16 and
    fp32, plain and Bayesian, on an AVX-512 CPU with native bf16 and on an AVX2 CPU without it (fp32 there: plain
    LeNet-5 0.68x and ResNet-20 0.90x of the NCHW epoch, BC-GNJ 0.83x and 0.88x). ``precision`` is kept in the
    signature for callers that decide per precision; it no longer changes the answer."""
    return device_type == "cpu" and compiled_step.has_conv(model)


def _to_channels_last(model: nn.Module):
    """Weights to NHWC and a forward pre-hook that makes the input NHWC; returns the hook's handle."""
    model.to(memory_format=torch.channels_last)

    def hook(_module: nn.Module, args: tuple) -> tuple:
        first = args[0]
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            return (first.contiguous(memory_format=torch.channels_last), *args[1:])
        return args

    return model.register_forward_pre_hook(hook)


def _fit(model, data, config, checkpoint_path, progress, stop_after_epochs, log, objective, place: torch.device,
         amp: bool, distributed: bool, cuda_graphs: bool = False,
         compile_step: bool | str | None = False) -> TrainHistory:
    graphs = cuda_graphs and _graphs_allowed(model, place, amp, distributed, log)
    optimizer = make_optimizer(model, config, capturable=graphs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: _lr_factor(config.lr_schedule, e, config.epochs)
    )
    seed_everything(config.seed)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else None
    forward = net if net is not None else model
    if amp:
        forward = AutocastForward(forward, place.type)
    run = TrainingRun(model, data, config, optimizer, objective or variational_loss, forward, net,
                      None if place.type == "cpu" else place, progress)
    if compiled_step.decide(model, place.type, distributed, graphs, run.steps * config.epochs, compile_step,
                            log):
        run.compiled = compiled_step.compiled_objective(forward, run.objective, model, run.n_train, log)

    def one_epoch(epoch: int) -> dict[str, float]:
        if distributed:  # independent posterior noise per rank, reproducible on resume
            torch.manual_seed(_rank_seed(config.seed, epoch, dist_utils.rank()))
        record = _train_epoch_graphed(run, epoch) if graphs else _train_epoch(run, epoch)
        if run.compiled is not None:
            record["compiled_step"] = 1.0
        for _, layer in bayesian_layers(model):
            layer.on_epoch_end()
        return record

    epochs = train_epochs(model, optimizer, scheduler, config, one_epoch,
                          lambda: {f"val_{k}": v for k, v in evaluate(model, data.val).items()},
                          lambda record: _epoch_line(record, config.epochs), checkpoint_path, log,
                          stop_after_epochs)
    return TrainHistory(epochs)


def _graphs_allowed(model: nn.Module, place: torch.device, amp: bool, distributed: bool, log) -> bool:
    """Whether ``fit(cuda_graphs=True)`` can capture this run's step; if not, say why (it then trains eagerly)."""
    unsafe = graph_unsafe_layers(model)
    reason = ("it needs a CUDA device" if place.type != "cuda" else "bf16 autocast is not captured" if amp
              else "data-parallel steps are not captured" if distributed
              else f"layers {unsafe} are not graph-safe" if unsafe else None)
    if reason is not None:
        log(f"cuda_graphs: {reason}; training eagerly")
    return reason is None


@dataclass
class TrainingRun:
    """What every epoch of one :func:`fit` call uses, in one place instead of a dozen arguments.

    ``forward`` is what the batches go through (the model, its ``DistributedDataParallel`` wrapper ``net`` when
    data-parallel, either under :class:`AutocastForward` for bf16); ``device`` is where batches are moved
    (``None``: they stay on the CPU). ``n_train`` (the KL's N), ``steps`` (optimiser steps per epoch) and
    ``has_bayes`` are derived from the data and the model.
    """

    model: nn.Module
    data: DataBundle
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    objective: Any
    forward: nn.Module
    net: nn.Module | None = None
    device: torch.device | None = None
    progress: bool = False
    n_train: int | None = None
    steps: int | None = None
    graphed: GraphedStep | None = None  # the captured step of a cuda_graphs run (made at its first full batch)
    compiled: Any = None  # (images, labels, kl_scale) -> (loss, nll, kl) compiled (bayescomp.compiled_step), or None

    def __post_init__(self) -> None:
        self.n_train = len(self.data.train) if self.n_train is None else self.n_train
        self.steps = split_steps(self.data.train, self.config.batch_size) if self.steps is None else self.steps
        self.has_bayes = any(True for _ in bayesian_layers(self.model)) or hasattr(self.model, "kl_divergence")


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of a rank's posterior noise in an epoch: the ranks must not draw the same noise for their slices."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + 1) % (2**63)


def _epoch_generator(config: TrainConfig, epoch: int) -> torch.Generator:
    """The data order (and augmentation) of an epoch: seeded by (seed, epoch), so a resumed run sees the same."""
    return torch.Generator().manual_seed(config.seed * 100_003 + epoch)


def _constraints_step(model: nn.Module):
    """What runs after every optimiser step: each Bayesian layer's ``apply_constraints``."""
    layers = [layer for _, layer in bayesian_layers(model)]

    def after_step() -> None:
        for layer in layers:
            layer.apply_constraints()

    return after_step


def _train_epoch(run: TrainingRun, epoch: int) -> dict[str, float]:
    """One pass over the training split through :func:`bayescomp.loop.run_epoch`; ``net`` is the
    ``DistributedDataParallel`` wrapper when data-parallel.

    Data-parallel, with W ranks and global batch B: every rank draws the same global batch (same seeded order and
    augmentation) and computes the objective on its contiguous slice of n_r examples, then rescales its NLL term:
    local loss = (n_r W / B) * mean NLL over the slice + kl_scale * KL / N. DDP averages the gradients over the W
    ranks, so the NLL part becomes the mean over the global batch and the KL term, identical on every rank, is
    counted once per model, not once per rank: the gradient is the single-process gradient of the same batch.
    The logged loss / NLL are the global-batch values (one all-reduce per step, which also makes every rank
    stop together on a non-finite loss).
    """
    model, config, forward, net, steps, n_train = run.model, run.config, run.forward, run.net, run.steps, run.n_train
    objective = run.objective
    (model if net is None else net).train()
    generator = _epoch_generator(config, epoch)
    after_step = _constraints_step(model)
    augment = (lambda x, rows: crop_flip(x, generator, rows=rows)) if config.augment == "crop_flip" else None

    def step_loss(batch, step: int) -> StepLoss:
        images, labels = batch
        scale = kl_weight(epoch + step / steps, config.kl_warmup_epochs)
        if net is None:
            if augment is not None:
                images = augment(images, None)
            if run.compiled is not None and labels.shape[0] == config.batch_size:
                loss, nll, kl = run.compiled(images, labels, scale)  # a smaller last batch runs eagerly
            else:
                loss, nll, kl = objective(forward(images), labels, model, n_train, scale)
            finite = bool(torch.isfinite(loss))
            return StepLoss(loss, loss.item(), nll.item(), kl.item(), None if finite else str(loss.item()),
                            f"nll={nll.item():.4g}, kl={kl.item():.4g}")
        local, loss, nll, kl, share = shard_loss(forward, model, objective, images, labels, n_train, scale, augment)
        summary = torch.tensor([nll.item() * share, 0.0 if torch.isfinite(local) else 1.0],
                               dtype=torch.float64, device=loss.device)
        torch.distributed.all_reduce(summary)
        bad = int(summary[1].item())
        global_nll = summary[0].item()
        value = f"non-finite on {bad} of {dist_utils.world_size()} ranks" if bad else None
        return StepLoss(local, global_nll + (loss.item() - nll.item()), global_nll, kl.item(), value,
                        f"this rank: loss {loss.item():.4g}, nll={nll.item():.4g}, kl={kl.item():.4g}")

    batches = run.data.train.batches(config.batch_size, shuffle=True, generator=generator, device=run.device)
    record = run_epoch(batches, step_loss, run.optimizer, epoch, config.epochs, steps, run.progress, after_step)
    if run.has_bayes:
        record["kl_weight"] = kl_weight(epoch + 1, config.kl_warmup_epochs)
    return record


def _train_epoch_graphed(run: TrainingRun, epoch: int) -> dict[str, float]:
    """:func:`_train_epoch` with each full mini-batch's step replayed as a CUDA graph (:mod:`bayescomp.cuda_graphs`),
    captured at the epoch's first full batch (the learning rate is a constant of the graph); the first steps of the
    run are eager warm-up steps and a smaller last batch runs eagerly. Same data order, objective and logging."""
    model, config, steps = run.model, run.config, run.steps
    model.train()
    generator = _epoch_generator(config, epoch)
    after_step = _constraints_step(model)
    totals = torch.zeros(3, dtype=torch.float64)
    start, captured = time.perf_counter(), False
    batches = run.data.train.batches(config.batch_size, shuffle=True, generator=generator, device=run.device)
    for step, (images, labels) in enumerate(batches):
        if config.augment == "crop_flip":
            images = crop_flip(images, generator)
        scale = kl_weight(epoch + step / steps, config.kl_warmup_epochs)
        if run.graphed is None:
            run.graphed = GraphedStep(model, run.forward, run.objective, run.optimizer, after_step, run.n_train,
                                      images, labels)
        graphed = run.graphed
        if not graphed.fits(images):
            values = _eager_step(run, images, labels, scale, after_step)
        elif graphed.warmups < WARMUP_STEPS:
            values = graphed.warm_up(images, labels, scale)
        else:
            if not captured:
                graphed.capture()
                captured = True
            values = graphed(images, labels, scale)
        loss, nll, kl = values.tolist()
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss} at epoch {epoch + 1}, step {step + 1} (nll={nll:.4g}, "
                                     f"kl={kl:.4g}); the step ran inside a CUDA graph and is applied in memory, but "
                                     f"the checkpoint of the last completed epoch is kept. {NAN_ADVICE}")
        totals += torch.tensor([loss, nll, kl], dtype=torch.float64)
    record = dict(zip(("loss", "nll", "kl"), (totals / max(steps, 1)).tolist()))
    record.update(epoch=epoch + 1, epoch_s=time.perf_counter() - start, lr=run.optimizer.param_groups[0]["lr"])
    if run.has_bayes:
        record["kl_weight"] = kl_weight(epoch + 1, config.kl_warmup_epochs)
    return record


def _eager_step(run: TrainingRun, images: torch.Tensor, labels: torch.Tensor, scale: float,
                after_step) -> torch.Tensor:
    """One ordinary step (a graph run's smaller last batch); returns (loss, nll, kl) as a tensor."""
    loss, nll, kl = run.objective(run.forward(images), labels, run.model, run.n_train, scale)
    values = torch.stack([loss.detach(), nll.detach(), kl.detach().to(loss.device, loss.dtype)])
    if not bool(torch.isfinite(loss)):
        return values  # the caller raises before anything is applied
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    after_step()
    return values


def shard_loss(net: nn.Module, model: nn.Module, objective: Any, images: torch.Tensor, labels: torch.Tensor,
               n_train: int, kl_scale: float, augment: Any = None):
    """This rank's loss on its contiguous slice of the global batch ``(images, labels)``.

    Returns ``(local, loss, nll, kl, share)``: ``local`` = ``loss + (n_r W / B - 1) * nll`` is what this rank
    back-propagates (see :func:`_train_epoch`; ``loss``, ``nll``, ``kl`` are the objective's values on the slice)
    and ``share`` = n_r / B weights the slice's mean NLL in the global mean. A rank whose slice is empty (a last
    batch smaller than W) runs one example with weight 0, so it still takes part in the gradient all-reduce with
    its KL term. ``augment(images, rows)``, if given, augments the global batch and returns the rows.
    """
    batch, world = labels.numel(), dist_utils.world_size()
    lo, hi = dist_utils.shard(batch)
    count = hi - lo
    rows = slice(lo, hi) if count else slice(0, 1)
    images = augment(images, rows) if augment is not None else images[rows]
    loss, nll, kl = objective(net(images), labels[rows], model, n_train, kl_scale)
    local = loss if count * world == batch else loss + nll * (count * world / batch - 1.0)
    return local, loss, nll, kl, count / batch


def _epoch_line(record: dict[str, float], total: int) -> str:
    line = (f"epoch {int(record['epoch']):3d}/{total}  loss {record['loss']:.4f}  nll {record['nll']:.4f}  "
            f"val err {record['val_error_pct']:.2f}%  ({record['epoch_s']:.1f}s)")
    if record.get("kl", 0.0):
        line += f"  kl {record['kl']:.1f}"
    return line
