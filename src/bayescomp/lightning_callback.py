"""PyTorch Lightning: the per-step and per-epoch hooks of :mod:`bayescomp.hooks` as a ``Callback``.

Install with ``pip install bayescomp[lightning]``. Your ``LightningModule`` adds the KL to its loss, and the
callback makes the calls a training loop of your own would make::

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.net(images), labels) + bayescomp.kl_loss(self.net) / self.n_train

    trainer = lightning.Trainer(callbacks=[BayesCompCallback()], ...)

:func:`bayescomp.after_step` runs after every *optimizer step* (not every batch: with ``accumulate_grad_batches``
several batches make one step; the callback watches ``trainer.global_step``, which counts steps), and
:func:`bayescomp.after_epoch` after every training epoch. For Turbo-VBI these calls are the algorithm.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from bayescomp.hooks import after_epoch, after_step


class BayesCompCallback(Callback):
    """Runs :func:`bayescomp.after_step` after each optimizer step and :func:`bayescomp.after_epoch` after each
    training epoch, on the whole ``LightningModule`` (its Bayesian layers, wherever they sit)."""

    def __init__(self) -> None:
        self._last_step = 0
        self.steps_seen = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step > self._last_step:  # an optimizer step happened in this batch
            self._last_step = trainer.global_step
            self.steps_seen += 1
            after_step(pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        after_epoch(pl_module)
