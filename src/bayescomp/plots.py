"""Plots written with every report: log-alpha histograms, what survives, and error against compression."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_log_alpha(result, path: Path) -> Path:
    """Histogram of every layer's group log alpha with the chosen threshold."""
    n = len(result.log_alpha)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for ax, name, stats, threshold in zip(axes[0], result.layer_names, result.log_alpha, result.thresholds):
        ax.hist(stats.numpy(), bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.2f}")
        ax.set_title(f"{name} ({len(stats)} groups)", fontsize=9)
        ax.set_xlabel("pruning statistic (keep below)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("groups")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_survivors(result, data, path: Path) -> Path:
    """Kept versus total units per layer, and the kept input pixels when the first layer is fully connected."""
    first_in = result.plan.in_keep[0]
    show_pixels = data is not None and first_in.numel() == math.prod(data.input_shape[1:]) and not first_in.all()
    fig, axes = plt.subplots(1, 2 if show_pixels else 1, figsize=(9 if show_pixels else 5, 3.2), squeeze=False)
    ax = axes[0][0]
    x = range(len(result.layer_names))
    ax.bar(x, result.architecture_dense, color="lightgray", label="dense")
    ax.bar(x, result.architecture_kept, color="tab:green", label="kept")
    ax.set_xticks(list(x), [f"layer {n}" for n in result.layer_names], rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("groups (filters / input neurons)")
    ax.legend(fontsize=8)
    if show_pixels:
        h, w = data.input_shape[1:]
        axes[0][1].imshow(first_in.view(h, w).numpy(), cmap="gray")
        axes[0][1].set_title(f"input pixels kept: {int(first_in.sum())}/{first_in.numel()}", fontsize=9)
        axes[0][1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tradeoff(report: dict[str, Any], path: Path) -> Path:
    """Validation/test error against architecture compression along a shared threshold, plus the chosen point."""
    curve = report.get("tradeoff_curve", [])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if curve:
        xs = [p["compression_architecture"] for p in curve]
        ax.plot(xs, [p["val_error_pct"] for p in curve], "o-", ms=3, label="val (shared threshold)")
        ax.plot(xs, [p["test_error_pct"] for p in curve], "s-", ms=3, label="test (shared threshold)")
    path_points = report.get("search_path", [])
    if path_points:
        wd = report["weights_dense"]
        ax.plot([wd / p["weights_kept"] for p in path_points], [p["val_error_pct"] for p in path_points],
                ".-", color="gray", alpha=0.6, label="val (greedy search path)")
    ax.plot([report["compression_architecture"]], [report["test_error_pct_pruned"]], "r*", ms=12,
            label="chosen (test, pruned)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("architecture compression (x)")
    ax.set_ylabel("error (%, log scale)")
    ax.set_title(f"{report['model']} / {report['data']} / {report['method']}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(report: dict[str, Any], result, data, directory: Path) -> list[str]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_log_alpha(result, directory / "log_alpha.png"),
        plot_survivors(result, data, directory / "survivors.png"),
        plot_tradeoff(report, directory / "tradeoff.png"),
    ]
    return [str(p) for p in paths]
