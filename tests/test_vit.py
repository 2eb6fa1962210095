"""A Vision Transformer through bayescomp: BC-GNJ on the MLP hidden units, pruned through the dependency graph,
equal to the masked model, exported to ONNX (issue 19 item 3's acceptance model; figures in
benchmarks/results/vit_cifar10_gnj.md)."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.vit_cifar10 import hidden_widths, macs, masked_difference, parameters, run
from bayescomp import bayesify, compress_posterior
from bayescomp.compress import CompressConfig
from bayescomp.export import export_model
from bayescomp.models.vit import TinyViT, mlp_hidden_filter
from bayescomp.priors.base import bayesian_layers


def _half_pruned(seed: int = 0):
    """A TinyViT whose BC-GNJ posterior makes every odd hidden unit pure noise (log alpha 6) and the rest sure
    (log alpha -9): a threshold of 0 must remove exactly the odd units of each block."""
    torch.manual_seed(seed)
    dense = TinyViT(10, (3, 32, 32), (0.5,), (0.25,)).eval()
    bayes = bayesify(dense, "gnj", filter_fn=mlp_hidden_filter)
    names = [name for name, _ in bayesian_layers(bayes)]
    assert names == ["blocks.0.fc2", "blocks.1.fc2"], "only the MLP hidden units carry a prior"
    for _, layer in bayesian_layers(bayes):
        with torch.no_grad():
            layer.z_mu.fill_(1.0)
            layer.z_log_sigma2.fill_(-9.0)
            layer.z_log_sigma2[1::2] = 6.0
    return dense, bayes


def test_vit_mlp_hidden_units_are_pruned_and_equal_the_masked_model(tmp_path):
    dense, bayes = _half_pruned()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = compress_posterior(bayes, None, CompressConfig(thresholds=0.0), example_input=x[:2])
    assert hidden_widths(result.model) == [64, 64]
    assert result.model.blocks[0].fc1.in_features == 64 and result.model.head.in_features == 64, "stream kept"
    assert masked_difference(bayes, result, x) < 1e-5
    kept_rows = torch.arange(0, 128, 2)
    torch.testing.assert_close(result.model.blocks[1].fc1.weight, dense.blocks[1].fc1.weight[kept_rows])
    # what the cut saves is exactly the removed units' share of the MLP products
    saved = macs(dense, (3, 32, 32)) - macs(result.model, (3, 32, 32))
    assert saved == 2 * 64 * (64 * 64 + 64 * 64)  # 2 blocks x 64 tokens x (fc1 + fc2 halves)
    assert parameters(dense) - parameters(result.model) == 2 * (64 * 64 + 64 + 64 * 64)
    exported = export_model(result.quantized_model, "onnx", tmp_path / "vit.onnx", x)
    assert exported["max_abs_diff"] <= 1e-4


def test_vit_benchmark_runs_end_to_end_on_a_small_subset():
    args = argparse.Namespace(train_subset=256, val_size=200, test_subset=200, dense_epochs=1, epochs=1,
                              tolerance=1.0, precision="fp32", seed=0, threads=1)
    record = run(args)
    assert record["pruned_vs_masked_max_abs_diff"] < 1e-4 and record["onnx_max_abs_diff"] < 1e-3
    assert all(k <= 128 for k in record["mlp_hidden_kept"]) and record["mac_ratio"] >= 1.0
    assert record["parameters_dense"] == parameters(TinyViT(10, (3, 32, 32)))
    assert 0.0 <= record["test_error_pct"] <= 100.0 and record["dense_test_error_pct"] < 90.0


@pytest.mark.parametrize("prior", ["ghs", "svd"])
def test_vit_takes_the_other_priors_on_its_mlp(prior):
    torch.manual_seed(0)
    bayes = bayesify(TinyViT(10, (3, 32, 32)), prior, filter_fn=mlp_hidden_filter)
    out = bayes.train()(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
