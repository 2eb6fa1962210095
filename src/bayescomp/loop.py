"""The one training loop: epochs with resume and checkpoints, steps with the NaN guard.

Every trainer of bayescomp runs through these two functions and differs only in what it passes in: where the
batches come from and how a batch becomes a loss (:class:`StepLoss`).

* single-process training (:func:`bayescomp.train.fit`): the objective on the whole batch;
* data-parallel training: each rank's slice of the global batch, with one all-reduce that tells every rank the
  global NLL and whether any rank's loss is non-finite, so all ranks stop together;
* the hypernetwork (:mod:`bayescomp.hyper.train`): batches drawn by a context sampler, the loss of one context.

:func:`train_epochs` owns what an epoch is around the steps: resuming from the newest readable checkpoint (the
configuration it was written with must match), the learning-rate schedule, validation, the log line and the
atomic checkpoint after every epoch, so an interrupted run of any trainer ends as an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bayescomp import distributed as dist_utils
from bayescomp.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state

NAN_ADVICE = "Try a lower --lr, a KL warm-up (--kl-warmup) or variance clipping."


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StepLoss:
    """What one training step computed.

    ``backward`` is the tensor this process back-propagates; ``loss``/``nll``/``kl`` are the logged values (the
    global batch's under data parallelism); ``value`` says what the loss became when it is not finite
    (``"nan"``, ``"non-finite on 1 of 2 ranks"``), ``None`` when every process's loss is finite; ``detail`` is
    added to the error (which context, the NLL and KL of this process).
    """

    backward: torch.Tensor
    loss: float
    nll: float
    kl: float
    value: str | None = None
    detail: str = ""


def run_epoch(batches: Iterable, step_loss: Callable[[Any, int], StepLoss], optimizer: torch.optim.Optimizer,
              epoch: int, epochs: int, steps: int, progress: bool = False,
              after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass: for every batch, the loss (:class:`StepLoss`), the NaN guard, backward, the optimiser step and
    ``after_step`` (the layers' constraints). Returns the per-step means of loss, NLL and KL and the epoch time.

    Raises:
        NonFiniteLossError: before the step that would have applied a non-finite loss.
    """
    totals = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
    start = time.perf_counter()
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
    done = 0
    for step, batch in enumerate(bar):
        out = step_loss(batch, step)
        if out.value is not None:
            detail = f" ({out.detail})" if out.detail else ""
            raise NonFiniteLossError(f"loss became {out.value} at epoch {epoch + 1}, step {step + 1}{detail}; the "
                                     f"checkpoint of the last completed epoch is kept. {NAN_ADVICE}")
        optimizer.zero_grad(set_to_none=True)
        out.backward.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        totals["loss"] += out.loss
        totals["nll"] += out.nll
        totals["kl"] += out.kl
        done = step + 1
        if progress:  # the running mean of this epoch, updated every step (not a stale first-batch value)
            bar.set_postfix(loss=f"{totals['loss'] / done:.4f}", refresh=False)
    record = {k: v / max(steps, 1) for k, v in totals.items()}
    record.update(epoch=epoch + 1, epoch_s=time.perf_counter() - start, lr=optimizer.param_groups[0]["lr"])
    return record


def load_in_turn(path: str | Path) -> dict[str, Any] | None:
    """Load a checkpoint on rank 0 first (it may set a corrupt file aside), then on the other ranks."""
    state = load_checkpoint(path) if dist_utils.is_main() else None
    dist_utils.barrier()
    if not dist_utils.is_main():
        state = load_checkpoint(path)
    if not dist_utils.all_equal(None if state is None else state["epoch"]):
        raise RuntimeError(f"the ranks read different checkpoints from {path}")
    return state


def with_field_defaults(config: Any, written: Any) -> Any:
    """``written`` (a config saved as a dict) with the fields it lacks set to ``config``'s dataclass defaults, so a
    checkpoint written before a field existed (e.g. ``TrainConfig.optimizer``) still resumes under a config that
    leaves that field at its default."""
    if not isinstance(written, dict) or not is_dataclass(config):
        return written
    defaults = {f.name: (f.default if f.default is not MISSING else f.default_factory())
                for f in fields(config) if f.default is not MISSING or f.default_factory is not MISSING}
    return {**defaults, **written}


def train_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, config: Any,
                 one_epoch: Callable[[int], dict[str, float]], validate: Callable[[], dict[str, float]],
                 line: Callable[[dict[str, float]], str], checkpoint_path: str | Path | None = None,
                 log: Callable[[str], Any] = print, stop_after_epochs: int | None = None,
                 extra_state: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """``config.epochs`` epochs of ``one_epoch(epoch)``, each followed by the schedule step, ``validate()`` (its
    keys join the epoch's record), the log ``line(record)`` and a checkpoint (rank 0 writes it).

    A checkpoint at ``checkpoint_path`` is resumed from when it was written with the same ``config`` and the same
    ``extra_state`` (e.g. the hypernetwork's own config); otherwise a ``ValueError`` says to start over.
    ``stop_after_epochs`` ends early as an interruption would (tests). Returns the history of epoch records.
    """
    extra = dict(extra_state or {})
    history: list[dict[str, float]] = []
    start = 0
    state = load_in_turn(checkpoint_path) if checkpoint_path else None
    if state is not None:
        written = {"train_config": with_field_defaults(config, state.get("train_config")),
                   **{k: state.get(k) for k in extra}}
        if written != {"train_config": asdict(config), **extra}:
            raise ValueError(f"checkpoint {checkpoint_path} was written with other settings (another training "
                             f"config or model config: {state.get('train_config')}); use a new run directory "
                             "or --restart")
        restore_training_state(state, model, optimizer, scheduler)
        history, start = list(state["history"]), state["epoch"]
        log(f"resumed from {state.get('checkpoint_file', checkpoint_path)} at epoch {start}/{config.epochs}")
    for epoch in range(start, config.epochs):
        if stop_after_epochs is not None and epoch - start >= stop_after_epochs:
            break
        record = one_epoch(epoch)
        scheduler.step()
        record.update(validate())
        history.append(record)
        log(line(record))
        if checkpoint_path and dist_utils.is_main():
            save_checkpoint(training_state(model, optimizer, scheduler, epoch + 1, config, history, **extra),
                            checkpoint_path)
    return history
