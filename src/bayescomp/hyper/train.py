"""Training the conditional hypernetwork: a random context per mini-batch, its classes' data, its ELBO.

Each step draws a context (a uniform number of classes in [min_classes, max_classes], the classes uniformly, a
budget: 1 with probability ``full_budget_share``, else log-uniform in [budget_min, 1]) and a mini-batch of
training examples of those classes, and minimises :func:`context_loss`. The contexts and
the data order of epoch e come from a generator seeded with (seed, e), and every epoch ends in an atomic
checkpoint holding the RNG state, so an interrupted run resumes and ends as an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bayescomp.checkpoint import atomic_torch_save
from bayescomp.data import DataBundle
from bayescomp.hyper.context import Context, random_contexts, restrict
from bayescomp.hyper.generate import budget_plan, masked_scales
from bayescomp.hyper.model import HyperCompressor, HyperConfig
from bayescomp.noise import standard_normal
from bayescomp.objective import kl_weight
from bayescomp.loop import StepLoss, run_epoch, train_epochs
from bayescomp.train import TrainConfig, _lr_factor, make_optimizer, seed_everything

#: Learning-rate multipliers: the context-independent part of the log-variances (the head's bias) starts far (-9)
#: from where the prior pulls unneeded groups, so it moves ten times faster (BC-GNJ's z_log_sigma2 reasoning);
#: the context-dependent weights keep the base rate (at 10x the variances overshoot and the loss explodes).
DEFAULT_HYPER_LR_SCALES = {"head_log_sigma2.bias": 10.0}


def sample_context(generator: torch.Generator, num_classes: int, config: HyperConfig) -> Context:
    top = config.max_classes or num_classes
    k = int(torch.randint(config.min_classes, top + 1, (1,), generator=generator))
    classes = torch.randperm(num_classes, generator=generator)[:k].tolist()
    if float(torch.rand(1, generator=generator)) < config.full_budget_share:
        budget = 1.0
    else:
        u = float(torch.rand(1, generator=generator))
        budget = math.exp(math.log(config.budget_min) * (1.0 - u))
    return Context.make(classes, num_classes, min(budget, 1.0))


def _validation_error(model: HyperCompressor, data: DataBundle, contexts: list[Context]) -> float:
    model.eval()
    errors = []
    with torch.no_grad():
        for context in contexts:
            subset = restrict(data.val, context.classes)
            wrong = 0
            for images, labels in subset.batches(1000):
                logits = model(images, context.vector(model.num_classes), sample=False)[:, list(context.classes)]
                wrong += int((logits.argmax(1) != labels).sum())
            errors.append(100.0 * wrong / max(len(subset), 1))
    model.train()
    return float(np.mean(errors))


def train_hypernetwork(model: HyperCompressor, data: DataBundle, config: TrainConfig,
                       checkpoint_path: str | Path | None = None, progress: bool = True, log=print,
                       stop_after_epochs: int | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place; returns the per-epoch history. Resumes from ``checkpoint_path`` if it exists.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the last epoch's checkpoint is kept.
        ValueError: the checkpoint was written with another training config.
    """
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _lr_factor(config.lr_schedule, e,
                                                                                  config.epochs))
    seed_everything(config.seed)
    labels = data.train.labels
    by_class = [torch.nonzero(labels == c).flatten() for c in range(model.num_classes)]
    steps = math.ceil(len(data.train) / config.batch_size)
    val_contexts = random_contexts(10, model.num_classes, range(model.config.min_classes,
                                                                min(5, model.num_classes) + 1), seed=777)

    def one_epoch(epoch: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        model.train()

        def batches():  # a context, then a batch of its classes' examples, per step
            for _ in range(steps):
                context = sample_context(generator, model.num_classes, model.config)
                pool = torch.cat([by_class[c] for c in context.classes])
                yield context, pool, pool[torch.randint(len(pool), (config.batch_size,), generator=generator)]

        def step_loss(batch, step: int) -> StepLoss:
            context, pool, idx = batch
            images = data.train.images[idx].float().div_(255)
            position = torch.full((model.num_classes,), -1, dtype=torch.long)
            position[list(context.classes)] = torch.arange(len(context.classes))
            scale = kl_weight(epoch + step / steps, config.kl_warmup_epochs)
            loss, nll, kl = context_loss(model, images, position[labels[idx]], context.vector(model.num_classes),
                                         list(context.classes), context.budget, len(pool), scale,
                                         n_train=len(data.train))
            finite = bool(torch.isfinite(loss))
            return StepLoss(loss, loss.item(), nll.item(), kl.item(), None if finite else str(loss.item()),
                            f"context {list(context.classes)}, budget {context.budget:.3g}")

        record = run_epoch(batches(), step_loss, optimizer, epoch, config.epochs, steps, progress)
        del record["lr"]
        return record

    def line(record: dict[str, float]) -> str:
        return (f"epoch {int(record['epoch']):3d}/{config.epochs}  loss {record['loss']:.4f}  nll {record['nll']:.4f}  "
                f"kl {record['kl']:.1f}  val err (10 contexts, unpruned) {record['val_context_error_pct']:.2f}%  "
                f"({record['epoch_s']:.1f}s)")

    return train_epochs(model, optimizer, scheduler, config, one_epoch,
                        lambda: {"val_context_error_pct": _validation_error(model, data, val_contexts)}, line,
                        checkpoint_path, log, stop_after_epochs, {"hyper_config": asdict(model.config)})


def save_hypernetwork(model: HyperCompressor, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the trained compressor (weights, config, threshold) and ``metadata`` (how to rebuild the teacher:
    ``model`` key, ``data``, ``mean``, ``std``) atomically."""
    atomic_torch_save({"format": "bayescomp-hyper-1", "state_dict": model.state_dict(),
                       "config": asdict(model.config), "num_classes": model.num_classes,
                       "input_shape": list(model.input_shape), "metadata": metadata}, path)


_HYPER_KEYS = ("state_dict", "config", "num_classes", "input_shape", "metadata")


def load_hypernetwork(path: str | Path, teacher: torch.nn.Sequential | None = None) -> HyperCompressor:
    """Load a compressor written by :func:`save_hypernetwork`. Zoo teachers are rebuilt from the metadata; a
    user-defined teacher's structure is passed as ``teacher`` (its weights are replaced by the saved ones).

    Raises:
        CheckpointError: the file is missing, truncated or not a hypernetwork file.
    """
    from bayescomp.checkpoint import CheckpointError, safe_torch_load
    from bayescomp.models import create_model

    path = Path(path)
    if path.is_dir():
        path = path / "hyper.pt"
    if not path.exists():
        raise CheckpointError(f"{path}: no such hypernetwork file; train one with `bayescomp hyper train`")
    blob = safe_torch_load(path, path, "hypernetwork file")  # tensors and plain values only: never runs code
    if not isinstance(blob, dict) or blob.get("format") != "bayescomp-hyper-1":
        raise CheckpointError(f"{path}: not a bayescomp hypernetwork file")
    missing = [key for key in _HYPER_KEYS if key not in blob]
    if missing or not isinstance(blob["metadata"], dict) or not isinstance(blob["config"], dict):
        raise CheckpointError(f"hypernetwork file {path} lacks the keys {missing or ['metadata/config as dicts']}; "
                              "it is damaged or was not written by bayescomp, train it again")
    meta = blob["metadata"]
    try:
        # files written before the weight posterior existed have no such key and no such weights
        config = HyperConfig(**{"weight_posterior": False, **blob["config"]})
        if teacher is None:
            teacher = create_model(meta["model"], blob["num_classes"], blob["input_shape"], meta["mean"],
                                   meta["std"])
        model = HyperCompressor(teacher, blob["num_classes"], tuple(blob["input_shape"]), config)
    except (TypeError, KeyError, ValueError) as error:
        raise CheckpointError(f"hypernetwork file {path} has an invalid config or metadata ({error}); "
                              "train it again") from None
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(f"hypernetwork file {path}: its weights do not fit the model it describes "
                              f"({str(error)[:200]}); train it again") from None
    model.metadata = meta
    return model.eval()


def context_loss(model: HyperCompressor, images: torch.Tensor, labels: torch.Tensor, context_vec: torch.Tensor,
                 classes: list[int], budget: float, n_context: int, kl_scale: float, n_train: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO of one context per example: cross-entropy over the context's classes (labels already
    renumbered to positions in ``classes``) + ``budget ** -budget_power`` x KL(scales) / N_context, and with
    ``weight_posterior`` + KL(shared weights) / ``n_train`` (N_context when not given). Returns (loss, NLL,
    KL of the scales)."""
    mu, log_sigma2 = model.posterior(context_vec.reshape(1, -1))
    z = mu + standard_normal(images.shape[0], mu.shape[-1]) * (0.5 * log_sigma2).exp()
    scales = model.split(z)
    if model.config.budget_masking and budget < 1.0:
        log_alpha = model.log_alpha(mu, log_sigma2)[0].detach()
        if bool(torch.isfinite(log_alpha).all()):  # NaN scales fall through to the trainer's NaN guard
            plan, _ = budget_plan(model, log_alpha, Context(tuple(classes), float(budget)))
            scales = masked_scales(model, scales, plan)
    logits = model.forward_with_scales(images, scales, sample_weights=True)[:, classes]
    nll = F.cross_entropy(logits, labels)
    kl = model.kl_divergence(mu, log_sigma2)[0]
    weight = budget ** (-model.config.budget_power)
    loss = nll + kl_scale * weight * kl / n_context
    if model.config.weight_posterior:
        loss = loss + kl_scale * model.weight_kl() / (n_train or n_context)
    return loss, nll, kl
