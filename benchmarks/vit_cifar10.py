"""A Vision Transformer compressed end to end: BC-GNJ prunes the MLP hidden units of a small ViT on CIFAR-10.

:class:`bayescomp.models.vit.TinyViT` (patch 4, width 64, 2 pre-norm blocks of 4-head attention and a 128-unit
GELU MLP) is trained densely (Adam, cosine schedule, crop/flip), then BC-GNJ is put on the MLPs' second layers only
(``filter_fn=mlp_hidden_filter``: their input groups are the hidden units; attention, norms and the residual
stream stay plain), trained, and compressed through the dependency graph with the threshold search on the
validation split. Every setting is fixed in this file before the test split is read; the test split is read once,
for the figures below.

Checks and figures written to ``benchmarks/results/vit_cifar10_gnj.{json,md}``:

* kept MLP widths per block; parameters and multiply-accumulates (all matrix products, attention included,
  counted by ``torch.utils.flop_counter``) of the dense and the compressed model, and their ratios;
* test error of the dense model, the posterior mean, the pruned model (and after fine-tuning, if any);
* the pruned plain model's outputs against the masked Bayesian model's (max abs difference);
* ONNX export of the compressed model, its outputs checked against PyTorch by the exporter.

    OMP_NUM_THREADS=2 python -m benchmarks.vit_cifar10 [--train-subset 20000] [--dense-epochs 8] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import RESULTS, this_command
from bayescomp import TrainConfig, bayesify, compress_posterior, evaluate, fit, load_dataset
from bayescomp.compress import CompressConfig
from bayescomp.export import export_model
from bayescomp.models.vit import TinyViT, mlp_hidden_filter
from bayescomp.pipeline import git_commit
from bayescomp.priors.base import deterministic_mode


def macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one example: every matrix product and convolution (attention's included). The
    fused inference kernel of ``nn.MultiheadAttention`` is switched off while counting: the counter does not see
    inside it, and would leave attention out."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(torch.zeros(1, *shape))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops() // 2)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def masked_difference(bayes: nn.Module, result, images: torch.Tensor) -> float:
    """Max |pruned plain model - masked Bayesian model| on ``images`` (the cut removes exactly what the mask does)."""
    graph = result.graph
    keep = graph.keep_from_thresholds(result.thresholds)
    with torch.no_grad(), deterministic_mode(bayes), graph.masked(bayes, keep):
        reference = bayes(images)
    with torch.no_grad():
        return float((result.model.eval()(images) - reference).abs().max())


def hidden_widths(model: nn.Module) -> list[int]:
    return [block.fc1.out_features for block in model.blocks]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_dataset("cifar10", val_size=args.val_size, seed=args.seed, train_subset=args.train_subset,
                        test_subset=args.test_subset)
    torch.manual_seed(args.seed)
    dense = TinyViT(data.num_classes, data.input_shape, data.mean, data.std)
    fit(dense, data, TrainConfig(epochs=args.dense_epochs, lr=1e-3, lr_schedule="cosine", weight_decay=5e-5,
                                 augment="crop_flip", seed=args.seed), precision=args.precision, log=print,
        progress=False)
    dense_test = evaluate(dense, data.test)["error_pct"]
    bayes = bayesify(dense, "gnj", filter_fn=mlp_hidden_filter)
    fit(bayes, data, TrainConfig(epochs=args.epochs, lr=1e-3, lr_schedule="cosine", kl_warmup_epochs=1,
                                 augment="crop_flip", seed=args.seed, lr_scales={"z_log_sigma2": 10.0}),
        precision=args.precision, log=print, progress=False)
    posterior_test = evaluate(bayes, data.test)["error_pct"]
    result = compress_posterior(bayes, data.val, CompressConfig(tolerance_pct=args.tolerance), log=print)
    images = data.test.example(64)
    difference = masked_difference(bayes, result, images)
    pruned_test = evaluate(result.quantized_model, data.test)["error_pct"]
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_model(result.quantized_model, "onnx", Path(tmp) / "vit.onnx", images)
    shape = tuple(data.input_shape)
    record = {
        "model": "tinyvit", "data": "cifar10", "method": "gnj", "seed": args.seed,
        "train_examples": len(data.train), "dense_epochs": args.dense_epochs, "epochs": args.epochs,
        "tolerance_pct": args.tolerance, "precision": args.precision,
        "mlp_hidden_dense": hidden_widths(dense), "mlp_hidden_kept": hidden_widths(result.model),
        "parameters_dense": parameters(dense), "parameters_compressed": parameters(result.model),
        "macs_dense": macs(dense, shape), "macs_compressed": macs(result.model, shape),
        "dense_test_error_pct": dense_test, "posterior_mean_test_error_pct": posterior_test,
        "test_error_pct": pruned_test, "val_error_pct_unpruned": result.base_val_error_pct,
        "thresholds": result.thresholds, "bits_per_layer": result.bits_per_layer,
        "pruned_vs_masked_max_abs_diff": difference,
        "onnx_max_abs_diff": exported["max_abs_diff"], "onnx_bytes": exported["bytes"],
        "wall_time_s": time.perf_counter() - started, "threads": args.threads,
        "command": this_command(), "git_commit": git_commit(),
    }
    record["parameter_ratio"] = record["parameters_dense"] / record["parameters_compressed"]
    record["mac_ratio"] = record["macs_dense"] / record["macs_compressed"]
    return record


def markdown(r: dict) -> str:
    return "\n".join([
        f"TinyViT (patch 4, width 64, 2 blocks, MLP {r['mlp_hidden_dense'][0]}) on CIFAR-10 "
        f"({r['train_examples']:,} training images, {r['dense_epochs']} dense + {r['epochs']} BC-GNJ epochs, "
        f"{r['precision']}, {r['threads']} CPU threads, {r['wall_time_s'] / 60:.0f} min); BC-GNJ on the MLP hidden "
        "units only; settings fixed before the test split was read.", "",
        "| | dense | compressed | ratio |", "|---|---|---|---|",
        f"| MLP hidden units per block | {r['mlp_hidden_dense']} | {r['mlp_hidden_kept']} | |",
        f"| parameters | {r['parameters_dense']:,} | {r['parameters_compressed']:,} | {r['parameter_ratio']:.2f}x |",
        f"| multiply-accumulates / image | {r['macs_dense']:,} | {r['macs_compressed']:,} | {r['mac_ratio']:.2f}x |",
        f"| test error | {r['dense_test_error_pct']:.2f} % | {r['test_error_pct']:.2f} % | |", "",
        f"Posterior-mean test error before pruning {r['posterior_mean_test_error_pct']:.2f} %. Pruned plain model "
        f"against the masked Bayesian model: max |difference| {r['pruned_vs_masked_max_abs_diff']:.2g}. ONNX "
        f"export checked against PyTorch: max |difference| {r['onnx_max_abs_diff']:.2g} "
        f"({r['onnx_bytes']:,} bytes). Command: `{r['command']}`.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--test-subset", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--dense-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    record = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vit_cifar10_gnj.json").write_text(json.dumps(record, indent=2))
    (RESULTS / "vit_cifar10_gnj.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
