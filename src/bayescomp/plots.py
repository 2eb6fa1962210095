"""Plots written with every report: log-alpha histograms, what survives, and error against compression."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def plot_log_alpha(result, path: Path) -> Path:
    """Histogram of every layer's group log alpha with the chosen threshold."""
    n = len(result.log_alpha)
    columns = min(n, 6)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    names = result.stat_names or result.layer_names
    for ax, name, stats, threshold in zip(axes.flat, names, result.log_alpha, result.thresholds):
        ax.hist(stats.numpy(), bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.2f}")
        ax.set_title(f"{name} ({len(stats)} groups)", fontsize=9)
        ax.set_xlabel("pruning statistic (keep below)")
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel("groups")
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


def support_grids(result) -> list:
    """Each layer's kept-weight pattern on the dense layer's GEMM grid (rows = output neurons/filters, columns =
    inputs x kernel positions), reconstructed from the plan: removed neurons show as empty rows/columns."""
    import torch

    from bayescomp.compress import prunable_modules

    grids = []
    for module, keep_in, keep_out in zip(prunable_modules(result.model), result.plan.in_keep, result.plan.out_keep):
        weight = module.weight.detach()
        kernel = weight[0, 0].numel() if weight.dim() == 4 else 1
        grid = torch.zeros(keep_out.numel(), keep_in.numel() * kernel, dtype=torch.bool)
        cols = keep_in.repeat_interleave(kernel)
        grid[keep_out.nonzero().flatten()[:, None], cols.nonzero().flatten()[None, :]] = weight.flatten(1) != 0
        grids.append(grid)
    return grids


def plot_support_patterns(result, path: Path) -> Path:
    """The support pattern (kept weights in black) of every layer on its dense GEMM grid."""
    grids = support_grids(result)
    fig, axes = plt.subplots(1, len(grids), figsize=(3.4 * len(grids), 3.2), squeeze=False)
    for ax, name, grid in zip(axes[0], result.layer_names, grids):
        ax.imshow(grid.numpy(), cmap="Greys", interpolation="nearest", aspect="auto")
        ax.set_title(f"{name}: {int(grid.sum()):,}/{grid.numel():,} kept", fontsize=9)
        ax.set_xlabel("input (x kernel position)", fontsize=8)
        ax.set_ylabel("output neuron / filter", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_calibration(report: dict[str, Any], path: Path) -> Path:
    """Reliability diagram (accuracy against confidence per bin) and accuracy against the rejected fraction."""
    cal = report["calibration"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    edges = [i / cal["bins"] for i in range(cal["bins"])]
    width = 1 / cal["bins"]
    shown = [(e, a) for e, a, n in zip(edges, cal["bin_accuracy"], cal["bin_count"]) if n]
    left.bar([e for e, _ in shown], [a for _, a in shown], width=width, align="edge", alpha=0.7, label="accuracy")
    left.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    left.set_xlabel("confidence")
    left.set_ylabel("accuracy")
    left.set_title(f"ECE {100 * cal['ece']:.2f} %", fontsize=9)
    left.legend(fontsize=7)
    curve = cal["rejection_curve"]
    right.plot([p["rejected_fraction"] for p in curve], [p["accuracy_pct"] for p in curve], "o-", ms=3)
    right.set_xlabel("fraction rejected (least confident first)")
    right.set_ylabel("accuracy on the rest (%)")
    right.grid(alpha=0.3)
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
        plot_support_patterns(result, directory / "support.png"),
    ]
    if report.get("calibration"):
        paths.append(plot_calibration(report, directory / "calibration.png"))
    return [str(p) for p in paths]
