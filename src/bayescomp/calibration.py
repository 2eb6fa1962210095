"""Calibration of a classifier's predictive probabilities: expected calibration error and accuracy against the
fraction of examples it is allowed to reject.

Users who compress a model for a device often act on its confidence (defer uncertain inputs to a larger model), so
every report measures whether the compressed model's confidence still means what it says:

* **ECE** (Guo et al. 2017): predictions are grouped into equal-width confidence bins; ECE is the example-weighted
  mean of |accuracy - mean confidence| over the bins (0 = perfectly calibrated).
* **Rejection curve**: the least confident fraction r of the test set is rejected and the accuracy on the rest is
  measured, for r on a grid; a model whose confidence ranks its errors well rises steeply.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bayescomp.data import TensorData


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """ECE of ``probs`` (N x K, rows summing to 1) against ``labels``, with the per-bin figures for a diagram."""
    if probs.dim() != 2 or probs.shape[0] != labels.shape[0] or bins < 1:
        raise ValueError(f"need probs (N, K) and labels (N,) with N matching and bins >= 1; got "
                         f"{tuple(probs.shape)}, {tuple(labels.shape)}, bins={bins}")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    # bin i holds confidences in [i/bins, (i+1)/bins); a confidence of exactly 1 goes to the last bin
    index = torch.clamp((confidence.double() * bins).long(), max=bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    accuracy = torch.bincount(index, weights=correct, minlength=bins) / counts.clamp(min=1)
    mean_conf = torch.bincount(index, weights=confidence.double(), minlength=bins) / counts.clamp(min=1)
    ece = float(((accuracy - mean_conf).abs() * counts).sum() / max(len(labels), 1))
    return {"ece": ece, "bins": bins, "bin_count": counts.long().tolist(), "bin_accuracy": accuracy.tolist(),
            "bin_confidence": mean_conf.tolist()}


def rejection_curve(probs: torch.Tensor, labels: torch.Tensor, steps: int = 10) -> list[dict[str, float]]:
    """Accuracy (%) on the examples kept after rejecting the least confident fraction, fractions 0, 1/steps, ...
    up to (steps-1)/steps; ties in confidence are broken by the example order (stable sort)."""
    confidence, predicted = probs.max(dim=1)
    order = torch.argsort(confidence, descending=True, stable=True)
    correct = (predicted == labels)[order].double()
    n = len(labels)
    curve = []
    for i in range(steps):
        kept = n - int(round(n * i / steps))
        curve.append({"rejected_fraction": i / steps, "kept": kept,
                      "accuracy_pct": 100.0 * float(correct[:kept].mean()) if kept else float("nan")})
    return curve


@torch.no_grad()
def predictive_probabilities(model: nn.Module, data: TensorData, batch_size: int = 1000) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Softmax of a plain model's logits (or the predictive mean of a density-propagating model) and the labels."""
    model.eval()
    probs, labels = [], []
    for images, targets in data.batches(batch_size):
        out = model(images)
        probs.append(out.softmax(dim=1) if isinstance(out, torch.Tensor) else out.mean)
        labels.append(targets)
    return torch.cat(probs), torch.cat(labels)


def calibration_report(model: nn.Module, data: TensorData, bins: int = 15) -> dict[str, Any]:
    """ECE, the reliability-diagram bins and the rejection curve of ``model`` on ``data``."""
    probs, labels = predictive_probabilities(model, data)
    return {**expected_calibration_error(probs, labels, bins), "rejection_curve": rejection_curve(probs, labels)}
