"""The report's plots name their panels by the model's qualified module names and explain their colours (issue 19,
item 7). The matplotlib Figures are read directly (Agg backend): titles, tick labels, legend entries, and whether
the colour a legend names is the colour the image draws."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.compress import CompressConfig, compress
from bayescomp.plots import layer_labels, log_alpha_figure, support_figure, survivors_figure
from bayescomp.priors import bayesian_layers


def _with_spread_log_alpha(model: nn.Module, seed: int) -> nn.Module:
    """BC-GNJ posterior whose group log alpha is spread over [-6, 2], so a threshold of -1 keeps some groups of
    every layer and removes others (an untrained posterior has one log alpha for all groups)."""
    generator = torch.Generator().manual_seed(seed)
    for _, layer in bayesian_layers(model):
        with torch.no_grad():
            layer.z_mu.uniform_(0.5, 1.5, generator=generator)
            log_alpha = torch.empty(layer.z_mu.shape).uniform_(-6, 2, generator=generator)
            layer.z_log_sigma2.copy_(log_alpha + torch.log(layer.z_mu**2))
    return model


def _compressed(model: nn.Module, threshold: float, seed: int = 0):
    torch.manual_seed(seed)
    posterior = _with_spread_log_alpha(bayesify(model, "gnj"), seed)
    return compress(posterior, None, CompressConfig(thresholds=threshold))


def _named_cnn() -> nn.Sequential:
    """Nested, named containers: the panels must say ``features.0``, not a position among the prunable layers."""
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2)),
        flatten=nn.Flatten(),
        classifier=nn.Sequential(nn.Linear(4 * 13 * 13, 16), nn.ReLU(), nn.Linear(16, 10)),
    ))


def _named_mlp() -> nn.Sequential:
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), hidden=nn.Linear(28 * 28, 16), act=nn.ReLU(),
                                     out=nn.Linear(16, 10)))


@pytest.fixture(scope="module")
def cnn_result():
    return _compressed(_named_cnn(), threshold=-1.0)


def _legend_entries(legend) -> dict[str, tuple[float, ...]]:
    """Legend label -> the face colour (RGBA) of its handle."""
    return {text.get_text(): tuple(handle.get_facecolor())
            for text, handle in zip(legend.get_texts(), legend.legend_handles)}


def _colour_of(image, value: float) -> tuple[float, ...]:
    """The colour ``image`` draws for ``value`` (its colour map through its own normalisation)."""
    return tuple(image.cmap(image.norm(value)))


def test_layer_labels_are_qualified_module_names(cnn_result):
    assert cnn_result.layer_names == ["features.0", "classifier.0", "classifier.2"]
    assert layer_labels(cnn_result) == ["features.0 (Conv2d)", "classifier.0 (Linear)", "classifier.2 (Linear)"]


def test_support_panels_are_titled_by_module_and_the_legend_names_both_colours(cnn_result):
    fig = support_figure(cnn_result)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert [t.split(" ")[0] for t in titles] == ["features.0", "classifier.0", "classifier.2"]
        for title, grid_axes in zip(titles, fig.axes):
            kept, total = title.split(": ")[1].split(" kept")[0].replace(",", "").split("/")
            image = grid_axes.images[0].get_array()
            assert int(kept) == int(np.asarray(image).sum()) and int(total) == image.size
        assert len(fig.legends) == 1
        entries = _legend_entries(fig.legends[0])
        kept_label = next(label for label in entries if label.startswith("kept"))
        pruned_label = next(label for label in entries if label.startswith("pruned"))
        for ax in fig.axes:
            image = ax.images[0]
            assert entries[kept_label] == pytest.approx(_colour_of(image, 1.0))
            assert entries[pruned_label] == pytest.approx(_colour_of(image, 0.0))
        assert entries[kept_label] != pytest.approx(entries[pruned_label])
    finally:
        plt.close(fig)


def test_a_fully_kept_layer_is_drawn_in_the_kept_colour():
    """With every weight kept the image is constant; it must still show the legend's "kept" colour."""
    result = _compressed(_named_mlp(), threshold=100.0)
    fig = support_figure(result)
    try:
        kept = _legend_entries(fig.legends[0])["kept weight"]
        for ax in fig.axes:
            image = ax.images[0]
            assert np.asarray(image.get_array()).all()
            drawn = image.to_rgba(np.asarray(image.get_array()))[0, 0]
            assert tuple(drawn) == pytest.approx(kept)
    finally:
        plt.close(fig)


def test_log_alpha_panels_are_titled_by_module(cnn_result):
    fig = log_alpha_figure(cnn_result)
    try:
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert [t.split(" ")[0] for t in titles] == ["features.0", "classifier.0", "classifier.2"]
        for ax in fig.axes:
            if ax.get_title():
                assert [t.get_text() for t in ax.get_legend().get_texts()][1].startswith("threshold")
    finally:
        plt.close(fig)


def test_survivor_plot_labels_layers_and_explains_the_pixel_colours():
    result = _compressed(_named_mlp(), threshold=-1.0)
    assert not result.plan.in_keep[0].all(), "the test needs some input pixels removed"
    fig = survivors_figure(result, SimpleNamespace(input_shape=(1, 28, 28)))
    try:
        bars, pixels = fig.axes
        assert [t.get_text() for t in bars.get_xticklabels()] == ["hidden (Linear)", "out (Linear)"]
        assert set(_legend_entries(bars.get_legend())) == {"dense (all groups)", "kept after pruning"}
        assert pixels.get_title().startswith("hidden:")
        entries = _legend_entries(pixels.get_legend())
        assert set(entries) == {"kept pixel", "removed pixel"}
        image = pixels.images[0]
        assert entries["kept pixel"] == pytest.approx(_colour_of(image, 1.0))
        assert entries["removed pixel"] == pytest.approx(_colour_of(image, 0.0))
        shown = np.asarray(image.get_array())
        assert shown.sum() == int(result.plan.in_keep[0].sum())
    finally:
        plt.close(fig)
