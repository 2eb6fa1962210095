"""Knowledge distillation for fine-tuning a pruned network from its dense parent (Hinton, Vinyals, Dean 2015).

A pruned model is usually fine-tuned on the labels alone. Its own dense parent is a better target: the softened
class probabilities of the dense network carry how it ranks the wrong classes too, which is what the pruned
network lost. The loss on a mini-batch is

    (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)),

with the T^2 factor keeping the soft term's gradient on the scale of the hard one when the temperature changes
(Hinton et al., Sec. 2). Used by :func:`bayescomp.train.fit` when ``TrainConfig.distill > 0`` and a teacher is
passed; the pipeline passes the run's dense model to the fine-tuning of the pruned model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """The mean over the batch of ``(1 - alpha) CE + alpha T^2 KL(teacher_T || student_T)`` (module docstring);
    computed in float32 whatever the logits' dtype (bf16 autocast)."""
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation weight alpha must be in [0, 1], got {alpha}")
    student = student_logits.float()
    hard = F.cross_entropy(student, labels)
    if alpha == 0.0:
        return hard
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature ** 2 * soft


class DistillationPair(nn.Module):
    """The student being trained and a frozen copy of its teacher, trained as one module by the library's loop.

    In training mode ``forward`` returns the student's logits and keeps the teacher's logits on the same (augmented)
    inputs in ``teacher_logits`` for :func:`distillation_objective`; in evaluation mode it is the student alone,
    so the loop's validation measures the student. The teacher is a deep copy with gradients off (the caller's
    model is never changed) and stays in evaluation mode (its batch-norm statistics are not updated).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(teacher).requires_grad_(False).eval()
        self.teacher_logits: torch.Tensor | None = None

    def train(self, mode: bool = True) -> DistillationPair:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.teacher_logits = self.teacher(x)
        return self.student(x)


def distillation_objective(temperature: float, alpha: float):
    """A :func:`bayescomp.train.fit` objective for a :class:`DistillationPair`: ``(loss, nll, kl)`` with the
    distillation loss as the per-example data term and no KL (the student is a plain network)."""

    def objective(outputs: torch.Tensor, labels: torch.Tensor, model: Any, n_train: int, kl_scale: float):
        teacher = getattr(model, "teacher_logits", None)
        if teacher is None:
            raise RuntimeError("distillation needs a DistillationPair in training mode (its teacher's logits)")
        loss = distillation_loss(outputs, teacher, labels, temperature, alpha)
        return loss, loss, loss.new_zeros(())

    return objective
