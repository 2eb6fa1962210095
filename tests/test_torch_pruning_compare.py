"""The posterior importance used beside Torch-Pruning ranks channels by the posterior, not by weight norms."""

import torch
from torch import nn

from benchmarks.torch_pruning_compare import PosteriorImportance, prune_to_ratio


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 4, 3), nn.Flatten())
        self.fc = nn.Linear(4 * 4 * 4, 3)  # prune_to_ratio leaves the classifier alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _net() -> _Net:
    torch.manual_seed(0)
    net = _Net()
    net.features[1].running_mean.copy_(torch.arange(8.0))  # names each channel, so the kept ones can be read back
    return net.eval()


def test_uniform_posterior_ratio_keeps_the_channels_the_posterior_trusts_most():
    net = _net()
    scores = torch.tensor([0.5, 3.0, -1.0, 2.0, 9.0, -4.0, 1.0, 0.0])  # -log alpha per output channel of conv 0
    pruned = prune_to_ratio(net, 0.5, "posterior_uniform", torch.randn(1, 3, 6, 6), {"features.0": scores})
    kept = sorted(int(v) for v in pruned.features[1].running_mean)
    assert kept == sorted(scores.topk(4).indices.tolist())
    # weight norms rank differently, so the test can tell the two criteria apart
    by_norm = sorted(net.features[0].weight.flatten(1).norm(dim=1).topk(4).indices.tolist())
    assert kept != by_norm


def test_coupled_layers_take_the_most_confident_member():
    import torch_pruning as tp

    net = _net()
    importance = PosteriorImportance(net, {"features.0": torch.tensor([0.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                                           "features.3": torch.tensor([2.0, -1.0, 7.0, 0.0])})

    class _Dep:
        def __init__(self, layer, fn):
            self.layer, self.pruning_fn = layer, fn

    class _Member:  # what iterating a Torch-Pruning group yields: (dependency, indices), plus root indices
        def __init__(self, dep, idxs, root_idxs):
            self.dep, self.idxs, self.root_idxs = dep, idxs, root_idxs

        def __iter__(self):
            return iter((self.dep, self.idxs))

    out, into = tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_conv_in_channels
    group = [_Member(_Dep(net.features[0], out), [1, 0, 2], [0, 1, 2]),
             _Member(_Dep(net.features[3], out), [0, 1, 2], [0, 1, 2]),
             _Member(_Dep(net.features[3], into), [1, 0, 2], [0, 1, 2])]  # input side: no posterior, ignored
    assert importance(group).tolist() == [5.0, 0.0, 7.0]
    assert importance(group[2:]) is None  # nothing scored: Torch-Pruning skips the group


def test_signal_to_noise_scores_rank_the_root_layers_channels(monkeypatch):
    """``posterior_snr`` reads a run's posterior through bayescomp's graph statistic (tested against the surgery in
    test_graph) and hands Torch-Pruning the root layer's channels, highest ratio kept."""
    from bayescomp import bayesify
    from benchmarks import torch_pruning_compare as tpc

    net = _net()
    bayes = bayesify(_net(), "gnj")
    with torch.no_grad():
        bayes.features[0].weight_mu.mul_(torch.linspace(0.1, 2.0, 8).view(8, 1, 1, 1))
    monkeypatch.setattr(tpc, "posterior_from_run", lambda dense, run_dir: bayes.eval())  # a run's bayes.ckpt
    example = torch.randn(1, 3, 6, 6)
    scores = tpc.posterior_snr(net, "runs/any", example)
    assert scores["features.0"].shape == (8,) and scores["features.3"].shape == (4,)
    snr = (bayes.features[0].posterior_mean_weight().square() / bayes.features[0].posterior_weight_variance())
    inputs = bayes.features[3].posterior_mean_weight().square() / bayes.features[3].posterior_weight_variance()
    expected = (snr.flatten(1).sum(1) + inputs.transpose(0, 1).flatten(1).sum(1)).log().detach()
    torch.testing.assert_close(scores["features.0"], expected.float(), rtol=1e-5, atol=1e-5)
    pruned = prune_to_ratio(net, 0.5, "posterior_snr", example, scores)
    assert sorted(int(v) for v in pruned.features[1].running_mean) == sorted(expected.topk(4).indices.tolist())


def test_a_posterior_row_is_remeasured_for_another_posterior():
    from benchmarks.torch_pruning_compare import already_measured

    row = {"importance": "posterior_uniform", "finetune_epochs": 10, "target_macs": 20_000_000, "lr": 5e-4,
           "flops_compressed": 20_000_000, "posterior": "runs/a"}
    target = {"macs": 20_000_000, "epochs": 10}
    assert already_measured([row], "posterior_uniform", target, {"lr": 5e-4, "posterior": "runs/a"})
    assert not already_measured([row], "posterior_uniform", target, {"lr": 5e-4, "posterior": "runs/b"})


def test_bayescomp_rows_say_how_the_cut_was_chosen():
    from benchmarks.torch_pruning_compare import _bayes_label

    def label(**compress) -> str:
        return _bayes_label({"method": "gnj", "config": {"compress": compress}})

    assert label(tolerance_pct=1.0) == "bayescomp gnj, 1-point search"
    assert label(target_macs=2.0, search="auto") == "bayescomp gnj, 2x MAC budget"
    assert label(target_macs=2.0, search="greedy", search_bn_images=250) == (
        "bayescomp gnj, 2x MAC budget, greedy allocation, adaptive batch norm (250 images)")
    assert label(target_macs=2.0, cut_weights="dense") == "bayescomp gnj, 2x MAC budget, cut from the dense weights"
    assert label(target_macs=2.0, cut_weights="posterior") == "bayescomp gnj, 2x MAC budget"
    assert label(target_macs=2.0, channel_score="snr") == "bayescomp gnj, 2x MAC budget, channels ordered by snr"
    assert label(target_macs=2.0, channel_score="log_alpha") == "bayescomp gnj, 2x MAC budget"
    assert label(target_macs=3.0, search="uniform") == "bayescomp gnj, 3x MAC budget, uniform allocation"
    tempered = _bayes_label({"method": "gnj", "config": {"compress": {"target_macs": 2.0},
                                                          "prior": {"group_kl_scale": 100.0}}})
    assert tempered == "bayescomp gnj, 2x MAC budget, groups' KL x100"
    assert label(target_macs=2.0) == "bayescomp gnj, 2x MAC budget"  # no prior section: the factor is 1
    flawed = _bayes_label({"method": "gnj", "config": {"compress": {"target_macs": 2.0, "channel_score": "snr"}},
                           "defect": "made with a defect"})
    assert "ordered by log alpha (defect)" in flawed and "channels ordered by snr" not in flawed


def test_a_row_is_skipped_only_when_measured_with_the_same_settings():
    """Rows with other settings (fp32 instead of bf16, another lr) are remeasured, and never dropped from the list."""
    from benchmarks.torch_pruning_compare import already_measured

    row = {"importance": "group_norm", "finetune_epochs": 10, "target_macs": 20_000_000, "flops_compressed": 20_050_000,
           "lr": 5e-4, "amp": True, "dense_test_error_pct": 8.5}
    target = {"macs": 20_100_000, "epochs": 10}
    same = {"lr": 5e-4, "amp": True, "dense_test_error_pct": 8.5}
    assert already_measured([row], "group_norm", target, same)
    assert not already_measured([row], "group_norm", target, {**same, "amp": False})
    assert not already_measured([row], "l1", target, same)
    assert not already_measured([row], "group_norm", {"macs": 30_000_000, "epochs": 10}, same)
    assert not already_measured([row], "group_norm", {**target, "epochs": 40}, same)


def test_a_distilled_row_is_never_taken_for_a_plain_one():
    """A row fine-tuned with distillation is another setting: a plain rerun remeasures, a distilled rerun skips it;
    rows written before the setting existed (no key) still count as plain."""
    from benchmarks.torch_pruning_compare import _distill_label, already_measured

    plain = {"importance": "group_norm", "finetune_epochs": 20, "target_macs": 20_000_000,
             "flops_compressed": 20_050_000, "lr": 5e-4, "amp": True, "dense_test_error_pct": 8.5}
    kd = {"alpha": 0.9, "temperature": 4.0}
    target = {"macs": 20_000_000, "epochs": 20}
    settings = {"lr": 5e-4, "amp": True, "dense_test_error_pct": 8.5}
    assert already_measured([plain], "group_norm", target, {**settings, "distill": None})
    assert not already_measured([plain], "group_norm", target, {**settings, "distill": kd})
    distilled = {**plain, "distill": kd}
    assert already_measured([distilled], "group_norm", target, {**settings, "distill": kd})
    assert not already_measured([distilled], "group_norm", target, {**settings, "distill": None})
    assert _distill_label(kd) == ", distilled from the dense model (alpha 0.9, T 4)"
    assert _distill_label(None) == ""


def test_an_sgd_row_is_never_taken_for_an_adam_one():
    """Fine-tuning with SGD is another setting: an Adam rerun (whose settings carry no optimizer key, as rows written
    before the option did not) remeasures nothing of it, and the table says which optimiser a row used."""
    from benchmarks.torch_pruning_compare import _optimizer_label, already_measured

    adam = {"importance": "group_norm", "finetune_epochs": 50, "target_macs": 14_000_000,
            "flops_compressed": 14_050_000, "lr": 5e-4, "amp": True, "dense_test_error_pct": 8.5, "distill": None}
    sgd_settings = {"lr": 0.02, "amp": True, "dense_test_error_pct": 8.5, "distill": None, "optimizer": "sgd",
                    "weight_decay": 5e-4}
    sgd = {**adam, **sgd_settings}
    target = {"macs": 14_000_000, "epochs": 50}
    assert not already_measured([adam], "group_norm", target, sgd_settings)
    assert already_measured([sgd], "group_norm", target, sgd_settings)
    adam_settings = {"lr": 5e-4, "amp": True, "dense_test_error_pct": 8.5, "distill": None}
    assert not already_measured([sgd], "group_norm", target, adam_settings)
    assert _optimizer_label("sgd", 0.02, 5e-4) == ", SGD lr 0.02, weight decay 0.0005"
    assert _optimizer_label(None, 5e-4, 0.0) == _optimizer_label("adam", 5e-4, 0.0) == ""


def test_bayescomp_rows_show_their_fine_tuned_validation_error():
    from benchmarks.torch_pruning_compare import _finetuned_val_label

    assert _finetuned_val_label({"finetune_validation": {"val_error_pct_after": 9.456}}) == "9.46 %"
    assert _finetuned_val_label({}) == "-"


def test_the_plot_never_joins_rows_fine_tuned_differently(tmp_path, monkeypatch):
    """Two group-norm rows with the same epochs and distillation, one Adam and one SGD, are two curves with two
    labels; a bayescomp point's label names its fine-tuning optimiser."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import torch_pruning_compare as tpc

    monkeypatch.setattr(tpc, "RESULTS", tmp_path)
    base = {"importance": "group_norm", "finetune_epochs": 50, "distill": {"alpha": 0.9, "temperature": 4.0}}
    rows = [{**base, "flops_compressed": 14e6, "test_error_pct": 10.1},
            {**base, "flops_compressed": 14e6, "test_error_pct": 9.5, "optimizer": "sgd", "lr": 0.01,
             "weight_decay": 5e-4},
            {**base, "flops_compressed": 16e6, "test_error_pct": 9.4, "optimizer": "sgd", "lr": 0.01,
             "weight_decay": 5e-4}]
    record = {"method": "gnj", "flops_compressed": 16e6, "flops_dense": 40e6, "test_error_pct": 10.0,
              "finetune_epochs": 40, "config": {"compress": {"target_macs": 2.0},
                                                "finetune": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4}}}
    captured = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: captured.setdefault("fig", fig))
    monkeypatch.setattr(plt, "close", lambda *a: None)
    tpc._plot(rows, [record], 8.5, 40e6, "t")
    lines = {line.get_label(): list(line.get_ydata()) for line in captured["fig"].axes[0].get_lines()}
    adam = [label for label in lines if label.startswith("Torch-Pruning") and "SGD" not in label]
    sgd = [label for label in lines if label.startswith("Torch-Pruning") and "SGD lr 0.01" in label]
    assert len(adam) == 1 and lines[adam[0]] == [10.1]
    assert len(sgd) == 1 and lines[sgd[0]] == [9.5, 9.4]
    assert any(label.startswith("bayescomp gnj") and "SGD lr 0.01" in label for label in lines)


def test_a_row_of_another_seed_is_measured_not_skipped_and_says_its_seed():
    """The fine-tuning seed is a setting: a seed-1 rerun remeasures a seed-0 row (older rows have no key: seed 0)."""
    from benchmarks.torch_pruning_compare import _seed_label, already_measured

    row = {"importance": "group_norm", "finetune_epochs": 50, "target_macs": 13_000_000,
           "flops_compressed": 13_010_000, "lr": 0.01, "amp": True, "dense_test_error_pct": 8.5}
    target = {"macs": 13_000_000, "epochs": 50}
    settings = {"lr": 0.01, "amp": True, "dense_test_error_pct": 8.5}
    assert already_measured([row], "group_norm", target, settings)
    assert not already_measured([row], "group_norm", target, {**settings, "seed": 1})
    assert already_measured([{**row, "seed": 1}], "group_norm", target, {**settings, "seed": 1})
    assert _seed_label(1) == ", seed 1" and _seed_label(0) == _seed_label(None) == ""
