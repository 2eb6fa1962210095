"""Plots written with every report: log-alpha histograms, what survives, and error against compression.

Each ``*_figure`` function builds a matplotlib Figure (tests read its titles and legends); ``plot_*`` saves it.
Panels are named by the layers' qualified module names (:func:`layer_labels`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


#: Colour map of the kept/removed images (input pixels, weight supports), drawn with fixed limits 0..1 so that the
#: colours the legend names are the colours drawn, also when every entry of a layer is kept.
KEEP_CMAP = "Greys"


def layer_labels(result) -> list[str]:
    """Each prunable layer as ``"<qualified name> (<type>)"``, e.g. ``"features.0 (Conv2d)"``: the names the
    model gives its modules (its attribute names, or the Sequential positions of a plain ``nn.Sequential``), so a
    panel can be matched to the code that built the model."""
    from bayescomp.compress import prunable_modules

    modules = prunable_modules(result.model)
    return [f"{name} ({type(module).__name__})" for name, module in zip(result.layer_names, modules)]


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _keep_legend(target, kept: str, removed: str, **where) -> None:
    """A two-entry legend for an image drawn with :data:`KEEP_CMAP` (kept = 1 is black, removed = 0 is white)."""
    cmap = plt.get_cmap(KEEP_CMAP)
    handles = [Patch(facecolor=cmap(1.0), edgecolor="black", label=kept),
               Patch(facecolor=cmap(0.0), edgecolor="black", label=removed)]
    target.legend(handles=handles, fontsize=7, **where)


def log_alpha_figure(result) -> Figure:
    """Histogram of every layer's (or coupled channel group's) pruning statistic with the chosen threshold."""
    n = len(result.log_alpha)
    columns = min(n, 6)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    names = result.stat_names or layer_labels(result)
    for ax, name, stats, threshold in zip(axes.flat, names, result.log_alpha, result.thresholds):
        ax.hist(stats.numpy(), bins=40, color="tab:blue", alpha=0.8, label="groups")
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.2f}")
        ax.set_title(f"{name}: {len(stats)} groups", fontsize=9)
        ax.set_xlabel("pruning statistic (keep below)")
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel("groups")
    fig.tight_layout()
    return fig


def plot_log_alpha(result, path: Path) -> Path:
    return _save(log_alpha_figure(result), path, 110)


def survivors_figure(result, data) -> Figure:
    """Kept versus total units per layer, and the kept input pixels when the first layer is fully connected."""
    first_in = result.plan.in_keep[0]
    show_pixels = data is not None and first_in.numel() == math.prod(data.input_shape[1:]) and not first_in.all()
    fig, axes = plt.subplots(1, 2 if show_pixels else 1, figsize=(9 if show_pixels else 5, 3.4), squeeze=False)
    ax = axes[0][0]
    x = range(len(result.layer_names))
    ax.bar(x, result.architecture_dense, color="lightgray", label="dense (all groups)")
    ax.bar(x, result.architecture_kept, color="tab:green", label="kept after pruning")
    ax.set_xticks(list(x), layer_labels(result), rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("groups (filters / input neurons)")
    ax.set_title("groups per layer", fontsize=9)
    ax.legend(fontsize=8)
    if show_pixels:
        h, w = data.input_shape[1:]
        pixels = axes[0][1]
        pixels.imshow(first_in.view(h, w).float().numpy(), cmap=KEEP_CMAP, vmin=0, vmax=1, interpolation="nearest")
        pixels.set_title(f"{result.layer_names[0]}: input pixels kept {int(first_in.sum())}/{first_in.numel()}",
                         fontsize=9)
        pixels.set_xticks([])
        pixels.set_yticks([])
        _keep_legend(pixels, "kept pixel", "removed pixel", loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2)
    fig.tight_layout()
    return fig


def plot_survivors(result, data, path: Path) -> Path:
    return _save(survivors_figure(result, data), path, 110)


def tradeoff_figure(report: dict[str, Any]) -> Figure:
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
    return fig


def plot_tradeoff(report: dict[str, Any], path: Path) -> Path:
    return _save(tradeoff_figure(report), path, 110)


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


def support_figure(result) -> Figure:
    """The support pattern of every layer on its dense GEMM grid: kept weights black, pruned ones white."""
    grids = support_grids(result)
    fig, axes = plt.subplots(1, len(grids), figsize=(3.4 * len(grids), 3.6), squeeze=False)
    for ax, label, grid in zip(axes[0], layer_labels(result), grids):
        ax.imshow(grid.float().numpy(), cmap=KEEP_CMAP, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        ax.set_title(f"{label}: {int(grid.sum()):,}/{grid.numel():,} kept", fontsize=9)
        ax.set_xlabel("input (x kernel position)", fontsize=8)
        ax.set_ylabel("output neuron / filter", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _keep_legend(fig, "kept weight", "pruned weight (a white row / column: a removed neuron or filter)",
                 loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_support_patterns(result, path: Path) -> Path:
    return _save(support_figure(result), path, 120)


def calibration_figure(report: dict[str, Any]) -> Figure:
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
    return fig


def plot_calibration(report: dict[str, Any], path: Path) -> Path:
    return _save(calibration_figure(report), path, 110)


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
