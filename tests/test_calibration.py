"""Calibration measures against independent computations and synthetic models whose calibration is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bayescomp.calibration import calibration_report, expected_calibration_error, rejection_curve


def _loop_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Plain-Python ECE: bin i holds confidences in [i/bins, (i+1)/bins), a confidence of 1 in the last bin."""
    total, n = 0.0, len(labels)
    for i in range(bins):
        members = [j for j in range(n) if min(int(probs[j].max() * bins), bins - 1) == i]
        if members:
            accuracy = np.mean([probs[j].argmax() == labels[j] for j in members])
            confidence = np.mean([probs[j].max() for j in members])
            total += len(members) / n * abs(accuracy - confidence)
    return total


def test_ece_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=g), dim=1)
    labels = torch.randint(0, 10, (500,), generator=g)
    for bins in (1, 5, 15):
        got = expected_calibration_error(probs, labels, bins)["ece"]
        assert got == pytest.approx(_loop_ece(probs.numpy(), labels.numpy(), bins), abs=1e-6)  # float32 inputs


def test_a_calibrated_model_has_small_ece_and_an_overconfident_one_does_not():
    """Confidence c ~ U(0.5, 1) and correct with probability c: calibrated by construction, so ECE is only the
    sampling error, about sqrt(c (1 - c) / n_bin) per bin (~0.003 here); random labels at the same confidence are
    wrong 90 % of the time, so ECE is the mean confidence minus 0.1."""
    g = torch.Generator().manual_seed(1)
    n = 200_000
    confidence = 0.5 + 0.5 * torch.rand(n, generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    wrong = torch.rand(n, generator=g) >= confidence
    probs = torch.zeros(n, 10)
    probs[:, 0] = confidence
    probs[:, 1] = 1 - confidence
    labels[wrong] = 2  # the prediction (class 0) is correct exactly when not `wrong`
    assert expected_calibration_error(probs, labels)["ece"] < 0.01
    random_labels = torch.randint(0, 10, (n,), generator=g)
    overconfident = expected_calibration_error(probs, random_labels)["ece"]
    assert overconfident == pytest.approx(float(confidence.mean()) - 0.1, abs=0.01)


def test_rejection_curve_rises_when_confidence_ranks_the_errors():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1, 1])  # the two most confident are right, the two least confident wrong
    curve = rejection_curve(probs, labels, steps=4)
    assert [p["kept"] for p in curve] == [4, 3, 2, 1]
    assert [p["accuracy_pct"] for p in curve] == [50.0, pytest.approx(200 / 3), 100.0, 100.0]


def test_calibration_report_of_a_real_model(mnist_small):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    report = calibration_report(model, mnist_small.test)
    assert 0.0 <= report["ece"] <= 1.0 and sum(report["bin_count"]) == len(mnist_small.test)
    assert report["rejection_curve"][0]["kept"] == len(mnist_small.test)
    assert all(math.isfinite(p["accuracy_pct"]) for p in report["rejection_curve"])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(torch.rand(5), torch.zeros(5, dtype=torch.long))
