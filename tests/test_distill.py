"""Knowledge distillation (bayescomp.distill): the loss against an independent computation, and fine-tuning through
the library's loop that leaves the teacher untouched and trains only the student."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from bayescomp.distill import DistillationPair, distillation_loss
from bayescomp.train import TrainConfig, evaluate, fit


def _reference(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, t: float, alpha: float) -> float:
    """The Hinton et al. loss written out in float64 with explicit softmaxes and sums."""
    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ce = -np.log(softmax(student)[np.arange(len(labels)), labels]).mean()
    p_t, p_s = softmax(teacher / t), softmax(student / t)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean()
    return (1 - alpha) * ce + alpha * t * t * kl


@pytest.mark.parametrize("t, alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (3.0, 0.0)])
def test_loss_matches_an_independent_computation(t, alpha):
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    labels = torch.randint(0, 10, (16,), generator=g)
    got = distillation_loss(student, teacher, labels, t, alpha).item()
    want = _reference(student.double().numpy(), teacher.double().numpy(), labels.numpy(), t, alpha)
    assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6)


def test_pure_distillation_ignores_the_labels_and_vanishes_on_the_teacher_itself():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    a, b = torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (8,), generator=g)
    assert distillation_loss(student, teacher, a, 4.0, 1.0).item() == pytest.approx(
        distillation_loss(student, teacher, b, 4.0, 1.0).item(), abs=1e-7)
    same = teacher.clone().requires_grad_(True)
    loss = distillation_loss(same, teacher, a, 4.0, 1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert same.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("t, alpha", [(0.0, 0.5), (-1.0, 0.5), (4.0, 1.5), (4.0, -0.1)])
def test_bad_settings_are_refused(t, alpha):
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        distillation_loss(logits, logits, torch.zeros(2, dtype=torch.long), t, alpha)
    with pytest.raises(ValueError):
        TrainConfig(distill=alpha, distill_temperature=t)


def test_the_pair_is_the_student_in_evaluation_and_keeps_its_teacher_frozen():
    student, teacher = nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    pair = DistillationPair(student, teacher).train()
    assert not pair.teacher.training  # batch-norm statistics of the teacher are never updated
    x = torch.randn(5, 4)
    assert torch.equal(pair(x), student(x))
    assert torch.allclose(pair.teacher_logits, teacher.eval()(x))
    assert all(not p.requires_grad for p in pair.teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's model is not changed


def test_fit_distils_into_the_student_and_leaves_the_teacher_alone(lenet300_pretrained_small):
    """With alpha = 1 the labels play no part: the student learns the teacher's function alone, so it must come to
    agree with the teacher on held-out images far more than a fresh network does."""
    from bayescomp import create_model

    data, teacher = lenet300_pretrained_small
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(1)
    student = create_model("lenet300")
    images = data.val.example(1000)

    def agreement() -> float:
        with torch.no_grad():
            return (student.eval()(images).argmax(1) == teacher.eval()(images).argmax(1)).float().mean().item()

    start = agreement()
    fit(student, data, TrainConfig(epochs=3, batch_size=100, lr=1e-3, distill=1.0), teacher=teacher,
        progress=False, log=lambda *_: None)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert agreement() > max(0.85, start + 0.5)
    assert evaluate(student, data.val)["error_pct"] < 20.0


def test_fit_refuses_half_a_distillation_setup(lenet300_pretrained_small):
    data, teacher = lenet300_pretrained_small
    student = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="teacher"):
        fit(student, data, TrainConfig(epochs=1, distill=0.5), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="teacher"):
        fit(student, data, TrainConfig(epochs=1), teacher=teacher, progress=False, log=lambda *_: None)


def test_a_run_fine_tunes_the_pruned_model_from_its_own_dense_model(tmp_path, monkeypatch):
    """The pipeline's fine-tuning distils from the run's dense model: the teacher fit receives is a plain network
    whose test error is the report's dense error, and the run says so in its log."""
    import bayescomp.train as train_module
    from bayescomp.data import load_dataset
    from bayescomp.pipeline import RunConfig, run
    from bayescomp.priors.base import bayesian_layers

    teachers = []
    real_fit = train_module.fit

    def spying_fit(model, data, config, *args, teacher=None, **kwargs):
        if teacher is not None:
            teachers.append((copy.deepcopy(teacher), config.distill))
        return real_fit(model, data, config, *args, teacher=teacher, **kwargs)

    monkeypatch.setattr("bayescomp.methods.finetune.fit", spying_fit)
    config = RunConfig(model="lenet300", train_subset=2000, test_subset=1000, val_size=500, latency=False,
                       plots=False, dense=TrainConfig(epochs=1), bayes=TrainConfig(epochs=1),
                       finetune=TrainConfig(epochs=1, distill=0.7))
    lines = []
    report = run(config, tmp_path / "run", log=lambda *a: lines.append(" ".join(map(str, a))), progress=False)
    assert [alpha for _, alpha in teachers] == [0.7]
    teacher = teachers[0][0]
    assert not list(bayesian_layers(teacher))
    test = load_dataset("mnist", val_size=500, seed=0, train_subset=2000, test_subset=1000).test
    assert evaluate(teacher, test)["error_pct"] == pytest.approx(report["dense_test_error_pct"], abs=1e-6)
    assert any("distilling from the dense model (alpha 0.7" in line for line in lines)
