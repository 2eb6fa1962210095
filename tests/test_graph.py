"""The dependency-graph compression path: residual additions, concatenations, batch norm, depthwise and grouped
convolutions. Every pruned network is checked against the unpruned one with the pruned channels zeroed where they
are read (an independent computation of what removal must give)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescomp import bayesify, fit
from bayescomp.compress import compress
from bayescomp.compress import CompressConfig, PruneError, UnsupportedModelError, prunable_modules
from bayescomp.compress.graph import REDUCTIONS, DependencyGraph
from bayescomp.compress.packed import PackedFormatError, load_packed, save_packed
from bayescomp.models import MODELS, create_model
from bayescomp.modules import Normalize
from bayescomp.priors import PRIORS
from bayescomp.measure import count_flops
from bayescomp.priors.base import bayesian_layers, deterministic_mode
from bayescomp.report import tradeoff_curve
from bayescomp.train import TrainConfig, evaluate


class Branchy(nn.Module):
    """A user's model: stem, a residual block, a depthwise-separable branch concatenated with a plain one, a
    grouped conv, global pooling and a classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Normalize((0.13,) * in_channels, (0.31,) * in_channels)
        self.stem = nn.Conv2d(in_channels, 12, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(12)
        self.res1 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.res1_bn = nn.BatchNorm2d(12)
        self.res2 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.res2_bn = nn.BatchNorm2d(12)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pointwise = nn.Conv2d(12, 10, 1)
        self.plain = nn.Conv2d(12, 6, 3, padding=1)
        self.grouped = nn.Conv2d(16, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(16 + 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(self.normalize(x))))
        x = F.relu(x + self.res2_bn(self.res2(F.relu(self.res1_bn(self.res1(x))))))
        x = F.max_pool2d(x, 2)
        both = torch.cat([F.relu(self.pointwise(F.relu(self.depthwise(x)))), F.relu(self.plain(x))], dim=1)
        grouped = F.relu(self.grouped(both))
        pooled = torch.cat([both, grouped], dim=1).mean(dim=(2, 3))
        return self.head(pooled)


def _noisy(model: nn.Module, prior: str = "gnj", seed: int = 0) -> nn.Module:
    """A Bayesian copy with varied group statistics (as after training) and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    with torch.no_grad():
        model.train()
        model(torch.rand(32, *_input_shape(model)))
    model.eval()
    bayes = bayesify(model, prior)
    generator = torch.Generator().manual_seed(seed)
    for _, layer in bayesian_layers(bayes):
        for name, param in layer.named_parameters():
            if name in ("z_log_sigma2", "weight_log_sigma2"):
                with torch.no_grad():
                    param.copy_(torch.empty(param.shape).uniform_(-9.0, 3.0, generator=generator))
    return bayes


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    if isinstance(first, nn.Linear):
        return (1, 28, 28)
    return (first.in_channels, 28, 28) if first.in_channels == 1 else (first.in_channels, 32, 32)


def _graph_models() -> list[tuple[str, nn.Module]]:
    models = [("branchy", Branchy())]
    for key in sorted(MODELS):
        model = create_model(key, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)
        if not isinstance(model, nn.Sequential):
            models.append((key, model))
    return models


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("name,model", _graph_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_pruned_network_equals_masked_network(name, model, reduce):
    bayes = _noisy(model)
    x = torch.rand(8, *_input_shape(model))
    with deterministic_mode(bayes):
        graph = DependencyGraph(bayes, x, reduce)
        stats = graph.stats()
        assert stats, "no prunable group found"
        keep = [s < torch.quantile(s.float(), 0.6) for s in stats]
        keep = [k if k.any() else torch.ones_like(k) for k in keep]
        small = graph.prune(keep)
        with graph.masked(bayes, keep):
            reference = bayes(x)
    assert not any(True for _ in bayesian_layers(small))
    assert torch.allclose(small(x), reference, atol=1e-5), (small(x) - reference).abs().max()
    kept = sum(m.weight.numel() for m in prunable_modules(small))
    dense = sum(m.weight.numel() for m in prunable_modules(graph.plain))
    assert kept == graph.weights_kept(keep) < dense
    names, plan = graph.layer_keeps(keep)  # the per-layer keeps describe the pruned shapes
    for layer_name, keep_in, keep_out in zip(names, plan.in_keep, plan.out_keep):
        module = small.get_submodule(layer_name)
        assert module.weight.shape[0] == int(keep_out.sum())
        assert (module.in_features if isinstance(module, nn.Linear) else module.in_channels) == int(keep_in.sum())
    last = graph.outputs[0]
    assert small.get_submodule(last).weight.shape[0] == 10  # the classes stay


def test_group_statistic_reduces_the_members_log_alpha():
    bayes = _noisy(Branchy())
    graph = DependencyGraph(bayes, torch.rand(2, 1, 28, 28), "min")
    mean_graph = DependencyGraph(bayes, torch.rand(2, 1, 28, 28), "mean")
    layers = dict(bayesian_layers(bayes))
    stem_group = next(g for g in graph.groups if any(m.layer == "res2" and m.side == "out" for m in g.members))
    # the residual stream: stem and res2 write it, and the depthwise conv (whose filter c reads only channel c)
    # is coupled to it, so a channel goes only when all three posteriors say so
    writers = torch.stack([layers[n].group_log_alpha().detach().double() for n in ("stem", "res2", "depthwise")])
    assert {m.layer for m in stem_group.members if m.side == "out"} == {"stem", "res2", "depthwise"}
    assert torch.allclose(stem_group.stat, writers.min(dim=0).values)
    mean_group = next(g for g in mean_graph.groups if g.root == stem_group.root)
    assert torch.allclose(mean_group.stat, writers.mean(dim=0))
    # channels read by the grouped conv are kept whole: removing them must keep its groups equal in size
    blocked = [g for g in graph.groups if any(m.layer == "grouped" for m in g.members)]
    assert blocked and all(not g.prunable for g in blocked)


def test_kept_variances_follow_the_surgery():
    bayes = _noisy(create_model("resnet20", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3))
    result = compress(bayes, None, CompressConfig(thresholds=-2.0), example_input=torch.rand(2, 3, 32, 32))
    layers = dict(bayesian_layers(bayes))
    for name, keep_in, keep_out, module in zip(result.layer_names, result.plan.in_keep, result.plan.out_keep,
                                               prunable_modules(result.model)):
        mean = layers[name].posterior_mean_weight().detach()[keep_out][:, keep_in]
        assert torch.equal(module.weight.detach(), mean)
    assert result.weights_kept < result.weights_dense
    assert len(result.bits_per_layer) == len(result.layer_names)
    assert result.stat_names and len(result.thresholds) == len(result.stat_names)


def test_thresholds_that_prune_everything_raise_and_change_nothing():
    bayes = _noisy(Branchy())
    before = {k: v.clone() for k, v in bayes.state_dict().items()}
    with pytest.raises(PruneError, match="every channel"):
        compress(bayes, None, CompressConfig(thresholds=-1e9), example_input=torch.rand(2, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in bayes.state_dict().items())
    with pytest.raises(ValueError, match="one per coupled channel group"):
        compress(bayes, None, CompressConfig(thresholds=[0.0] * 9), example_input=torch.rand(2, 1, 28, 28))


def test_unsupported_layers_are_named():
    class WithEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.table = nn.Embedding(10, 4)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3)) + self.table.weight[0]

    with pytest.raises(UnsupportedModelError, match="'table'.*Embedding"):
        DependencyGraph(WithEmbedding(), torch.rand(2, 1, 8, 8))
    with pytest.raises(UnsupportedModelError, match="example input"):
        compress(_noisy(Branchy()), None, CompressConfig(thresholds=0.0))


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_every_prior_compresses_a_residual_model(prior):
    bayes = _noisy(Branchy(), prior)
    x = torch.rand(4, 1, 28, 28)
    result = compress(bayes, None, CompressConfig(thresholds=0.0), example_input=x)
    graph = result.graph
    keep = graph.keep_from_thresholds(result.thresholds)
    with deterministic_mode(bayes), graph.masked(bayes, keep):
        reference = bayes(x)
    assert torch.allclose(result.model(x), reference, atol=1e-5)


def test_user_residual_model_end_to_end(mnist_small, tmp_path):
    """A user-defined model with a residual block, concatenations, a depthwise and a grouped conv: dense
    training, Bayesian training, the threshold search, the small plain model and its packed file."""
    torch.manual_seed(0)
    model = Branchy()
    fit(model, mnist_small, TrainConfig(epochs=2, lr=3e-3, batch_size=64), progress=False, log=lambda *_: None)
    bayes = bayesify(model, "gnj")
    fit(bayes, mnist_small, TrainConfig(epochs=2, lr=3e-3, batch_size=64, lr_scales={"z_log_sigma2": 10.0}),
        progress=False, log=lambda *_: None)
    config = CompressConfig(tolerance_pct=1.0)
    result = compress(bayes, mnist_small.val, config)
    assert isinstance(result.model, Branchy) and not any(True for _ in bayesian_layers(result.model))
    assert result.weights_kept < result.weights_dense
    base = result.base_val_error_pct
    assert evaluate(result.model, mnist_small.val)["error_pct"] <= base + config.tolerance_pct + 1e-9
    x = mnist_small.val.example(16)
    keep = result.graph.keep_from_thresholds(result.thresholds)
    with deterministic_mode(bayes), result.graph.masked(bayes, keep):
        assert torch.allclose(result.model(x), bayes(x), atol=1e-5)
    curve = tradeoff_curve(bayes, result, mnist_small)  # the report's curve carries each point's MACs
    dense_flops = count_flops(Branchy(), tuple(mnist_small.input_shape))
    assert curve and all(0 < p["flops"] <= dense_flops for p in curve)
    by_threshold = sorted(curve, key=lambda p: p["threshold"])
    assert all(a["flops"] <= b["flops"] and a["weights_kept"] <= b["weights_kept"]
               for a, b in zip(by_threshold, by_threshold[1:]))
    path = tmp_path / "branchy.bcz"
    save_packed(result.quantized_model, path)
    with pytest.raises(PackedFormatError, match="Branchy"):  # a user's class is rebuilt only when passed
        load_packed(path)
    loaded, meta = load_packed(path, classes=[Branchy])
    assert type(loaded) is Branchy and meta["_packed"]["version"] == 3
    assert torch.equal(loaded(x), result.quantized_model(x))


@pytest.mark.parametrize("search", ["greedy", "global"])
def test_searches_keep_the_validation_error_within_tolerance(search, mnist_small):
    """Both searches on the residual model and on a chain: the chosen network's validation error (on the search's
    own split) is within the tolerance of the unpruned posterior mean's, and something is pruned."""
    torch.manual_seed(0)
    for model in (Branchy(), create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])):
        fit(model, mnist_small, TrainConfig(epochs=1, lr=3e-3, batch_size=64), progress=False, log=lambda *_: None)
        bayes = _noisy(model)
        config = CompressConfig(tolerance_pct=2.0, search=search)
        result = compress(bayes, mnist_small.val, config)
        with deterministic_mode(bayes):
            assert result.base_val_error_pct == pytest.approx(evaluate(bayes, mnist_small.val)["error_pct"])
        pruned_error = evaluate(result.model, mnist_small.val)["error_pct"]
        assert pruned_error <= result.base_val_error_pct + 2.0 + 1e-9
        assert result.weights_kept < result.weights_dense
    with pytest.raises(ValueError, match="unknown search"):
        CompressConfig(search="random")


@pytest.mark.parametrize("target", [2.0, 3.5])
def test_mac_budget_prunes_the_least_that_meets_it(target, mnist_small):
    """``target_macs``: the compressed network has at most dense/target MACs (counted independently on the cut
    model), and the shared threshold one step higher (one group fewer pruned) would miss the budget."""
    for model in (Branchy(), create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])):
        bayes = _noisy(model, seed=1)
        shape = tuple(mnist_small.val.example(1).shape[1:])
        dense_macs = count_flops(model, shape)
        result = compress(bayes, mnist_small.val, CompressConfig(target_macs=target, fold_empty_units=False))
        assert count_flops(result.model, shape) <= dense_macs / target
        chosen = result.thresholds[0]
        pooled = sorted(set(torch.cat([s.double().flatten() for s in result.log_alpha]).tolist()))
        higher = [v - 1e-9 for v in pooled if v - 1e-9 > chosen]
        assert higher, "a budget above 1x must prune something"
        one_fewer = compress(bayes, mnist_small.val, CompressConfig(thresholds=higher[0], fold_empty_units=False))
        assert count_flops(one_fewer.model, shape) > dense_macs / target
        assert result.search_path[-1]["cost"] == count_flops(result.model, shape)


class Separable(nn.Module):
    """Stem, a depthwise-separable block added back onto the stem, and a classifier: every group is prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.depthwise, self.pointwise = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)
        self.wide, self.head = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(x + self.pointwise(F.relu(self.depthwise(x))))
        return self.head(F.relu(self.wide(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("model", [Branchy, Separable])
def test_snr_channel_score_is_the_saliency_each_channel_takes_with_it(model):
    """``channel_score="snr"``: a channel's statistic is minus the log of the E[w]² / Var[w] that leaves the
    network with it, measured independently: a copy whose weights are their signal-to-noise ratios is cut by the
    dependency graph's own surgery, and what the cut removed is summed (residual and depthwise groups included)."""
    from bayescomp.compress.structure import GraphStructure

    bayes = _noisy(model(), seed=3)
    structure = GraphStructure(bayes, torch.rand(2, 1, 28, 28), "min", channel_score="snr")
    layers = structure.graph.bayes

    def snr(name: str, module: nn.Module) -> torch.Tensor:
        if name not in layers:
            return torch.zeros_like(module.weight)
        return (layers[name].posterior_mean_weight().square() / layers[name].posterior_weight_variance()).detach()

    def total(pruned: nn.Module) -> float:
        return sum(float(m.weight.detach().double().sum()) for m in prunable_modules(pruned))

    keep_all = [torch.ones(len(stat), dtype=torch.bool) for stat in structure.stats]
    full = total(structure.graph.prune(keep_all, snr))
    for g, stat in enumerate(structure.stats):
        for channel in (0, len(stat) - 1):
            keep = [mask.clone() for mask in keep_all]
            keep[g][channel] = False
            removed = full - total(structure.graph.prune(keep, snr))
            assert float(stat[channel]) == pytest.approx(-math.log(removed), rel=1e-4), (g, channel)
    assert len(structure.stats) >= 2
    log_alpha = GraphStructure(bayes, torch.rand(2, 1, 28, 28), "min").stats
    assert any(not torch.equal(a.argsort(), b.argsort()) for a, b in zip(log_alpha, structure.stats))


@pytest.mark.parametrize("model", [Branchy, Separable])
def test_snr_plans_drop_the_channels_with_the_least_snr(model):
    """Every plan of a ``channel_score="snr"`` structure compares its thresholds with the SNR statistic, not the
    group log alpha (a run once ranked by one and thresholded on the other's scale): the channels a count-based
    plan drops are exactly those with the lowest SNR, computed here from a log-alpha graph; the ranks' mask digest
    reads the same masks."""
    from bayescomp.compress.digest import keep_masks
    from bayescomp.compress.graph import DependencyGraph, snr_statistic
    from bayescomp.compress.structure import GraphStructure

    bayes = _noisy(model(), seed=5)
    example = torch.rand(2, 1, 28, 28)
    structure = GraphStructure(bayes, example, "min", channel_score="snr")
    log_alpha_graph = DependencyGraph(bayes, example)
    expected = [snr_statistic(g, log_alpha_graph.bayes) for g in log_alpha_graph.prunable_groups]
    counts = [len(s) // 2 for s in expected]
    keep = structure.plan_for_counts(counts)
    assert any(k for k in counts)
    for mask, stat, count in zip(keep, expected, counts):
        assert int((~mask).sum()) == count
        if count:
            assert float(stat[~mask].min()) >= float(stat[mask].max())
    thresholds = [float(torch.quantile(s.double(), 0.6)) for s in expected]
    digest_masks = keep_masks(bayes, thresholds, example, channel_score="snr")
    assert all(torch.equal(a, b) for a, b in zip(digest_masks, structure.plan(thresholds)))


def test_snr_channel_score_needs_a_budget_and_reads_chains_through_the_graph(mnist_small):
    with pytest.raises(ValueError, match="give a budget"):
        CompressConfig(channel_score="snr")
    with pytest.raises(ValueError, match="channel_score"):
        CompressConfig(channel_score="norm", target_macs=2.0)
    lenet = _noisy(create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31]))
    result = compress(lenet, mnist_small.val, CompressConfig(target_macs=2.0, channel_score="snr"))
    assert result.graph is not None  # the chain went through the dependency graph, which computes the score
    dense = create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])
    assert count_flops(result.model, (1, 28, 28)) <= count_flops(dense, (1, 28, 28)) / 2.0


def test_mac_budget_rejects_bad_settings_and_unreachable_budgets(mnist_small):
    with pytest.raises(ValueError, match="reduction factor above 1"):
        CompressConfig(target_macs=0.5)
    with pytest.raises(ValueError, match="leave thresholds unset"):
        CompressConfig(target_macs=2.0, thresholds=-3.0)
    bayes = _noisy(Branchy(), seed=2)
    before = {k: v.clone() for k, v in bayes.state_dict().items()}
    with pytest.raises(PruneError, match="no shared threshold reaches the budget"):
        compress(bayes, mnist_small.val, CompressConfig(target_macs=1e6))
    assert all(torch.equal(before[k], v) for k, v in bayes.state_dict().items())


def test_cut_weights_dense_takes_the_dense_network_at_the_posteriors_channels(mnist_small):
    """``CompressConfig(cut_weights="dense")``: the posterior chooses the same channels, but every kept weight and
    batch-norm statistic is the dense network's (indexed by the plan's channel masks), not the posterior mean's.
    A chain, a missing dense model and a per-weight prior are refused with the reason."""
    dense = Branchy()
    bayes = _noisy(dense, seed=2)
    with torch.no_grad():
        for _, layer in bayesian_layers(bayes):
            layer.weight_mu.add_(0.1)  # posterior means away from the dense weights
        bayes.stem_bn.running_mean.add_(1.0)  # and batch-norm statistics that moved in training
    config = CompressConfig(target_macs=1.5, fold_empty_units=False)
    posterior_cut = compress(bayes, mnist_small.val, config)
    dense_cut = compress(bayes, mnist_small.val, replace(config, cut_weights="dense"), dense=dense)
    assert dense_cut.architecture_kept == posterior_cut.architecture_kept
    checked = 0
    for name, keep_in, keep_out in zip(dense_cut.layer_names, dense_cut.plan.in_keep, dense_cut.plan.out_keep):
        source, small = dense.get_submodule(name), dense_cut.model.get_submodule(name)
        if getattr(source, "groups", 1) != 1:
            continue
        expected = source.weight.detach()[keep_out][:, keep_in]
        assert torch.equal(small.weight.detach(), expected), name
        assert not torch.equal(posterior_cut.model.get_submodule(name).weight.detach(), expected), name
        checked += 1
    assert checked >= 4
    stem_keep = dense_cut.plan.out_keep[dense_cut.layer_names.index("stem")]
    assert torch.equal(dense_cut.model.stem_bn.running_mean, dense.stem_bn.running_mean[stem_keep])
    assert not torch.equal(posterior_cut.model.stem_bn.running_mean, dense.stem_bn.running_mean[stem_keep])
    with pytest.raises(ValueError, match="needs the dense model"):
        compress(bayes, mnist_small.val, replace(config, cut_weights="dense"))
    lenet = create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])
    with pytest.raises(ValueError, match="chain"):
        compress(_noisy(lenet), mnist_small.val, replace(config, cut_weights="dense"), dense=lenet)
    with pytest.raises(ValueError, match="per-weight zeros"):
        compress(_noisy(dense, "svd"), mnist_small.val, replace(config, cut_weights="dense"), dense=dense)
    with pytest.raises(ValueError, match="cut_weights"):
        CompressConfig(cut_weights="teacher")
