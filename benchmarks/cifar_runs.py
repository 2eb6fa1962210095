"""CIFAR-10 runs: ResNet-20/56 (and VGG-16) compressed end to end with BC-GNJ or BC-GHS, published with the results
contract plus ``onnx_max_abs_diff`` (the compressed model exported to ONNX and run by onnxruntime on 64 test images).

The defaults are the zoo's schedules (``bayescomp.pipeline.DEFAULT_SCHEDULES``: 60 dense + 30 or 60 Bayesian
epochs), meant for a GPU; ``--dense-epochs`` / ``--epochs`` shorten them for a CPU. A finished or interrupted run in
``--run-dir`` is resumed, not redone. Usage::

    python -m benchmarks.cifar_runs --model resnet20 --method gnj --dense-epochs 8 --epochs 6   # the 2-core CPU run
    python -m benchmarks.cifar_runs --model vgg16 --method gnj --device cuda                     # the paper's VGG-16
    python -m benchmarks.cifar_runs --model vgg16 --method ghs --device cuda

Writes ``benchmarks/results/<model>_cifar10_<method>.{json,md,bcz}`` and the run's plots.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from bayescomp.compress import BUDGET_ORDERS, CHANNEL_SCORES, CUT_WEIGHTS, SEARCHES, CompressConfig
from bayescomp.compress.packed import load_packed
from bayescomp.data import load_dataset
from bayescomp.export import export_model
from bayescomp.pipeline import RunConfig, run
from benchmarks._common import publish, this_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "resnet56", "vgg16"))
    parser.add_argument("--method", default="gnj", choices=("gnj", "ghs"))
    parser.add_argument("--dense-epochs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the Bayesian phase")
    parser.add_argument("--tolerance", type=float, default=0.5, help="search tolerance, points of validation error")
    parser.add_argument("--search-val-size", type=int, default=2000, help="validation images used by the search")
    parser.add_argument("--search-bn-images", type=int, default=0,
                        help="re-estimate batch-norm statistics on this many validation images before scoring each "
                             "search candidate (CompressConfig.search_bn_images; 0: off)")
    parser.add_argument("--search", default="auto", choices=SEARCHES,
                        help="threshold search (auto: one global threshold for graphs with many coupled groups; "
                             "with --target-macs, greedy spreads the cut across groups by the validation error, "
                             "uniform cuts the same fraction of every group)")
    parser.add_argument("--target-macs", type=float, default=None,
                        help="prune to this MAC reduction (e.g. 2) instead of the search tolerance")
    parser.add_argument("--target-weights", type=float, default=None,
                        help="and/or to this reduction of the weights kept (e.g. 3)")
    parser.add_argument("--budget-order", choices=BUDGET_ORDERS, default="joint",
                        help="with both budgets and --search greedy: joint savings, or weights_first / macs_first "
                             "(CompressConfig.budget_order)")
    parser.add_argument("--cut-weights", choices=CUT_WEIGHTS, default="posterior",
                        help="the pruned model takes the posterior means or the dense weights (the posterior still "
                             "chooses the channels; CompressConfig.cut_weights)")
    parser.add_argument("--channel-score", choices=CHANNEL_SCORES, default="log_alpha",
                        help="what orders a group's channels under a budget (CompressConfig.channel_score)")
    parser.add_argument("--round-to", type=int, default=1,
                        help="with --search uniform or greedy: each channel group keeps a multiple of this "
                             "(CompressConfig.round_to)")
    parser.add_argument("--group-kl-scale", type=float, default=None,
                        help="factor on the KL of the group scales (prior config group_kl_scale; 1 = the paper)")
    parser.add_argument("--variant", default=None, help="suffix of the result files, for a second setting")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--device", default=None, help="training device (cpu, cuda); default: cuda if available")
    parser.add_argument("--amp", action="store_true",
                        help="bfloat16 autocast in the Bayesian training and the fine-tuning")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training step as one CUDA graph (bayescomp.cuda_graphs; --device cuda)")
    parser.add_argument("--hardware", default=None, help="what the run ran on, for the result file")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from the shipped dense weights (benchmarks/pretrain.py) instead of training them")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning of the pruned model (disclosed)")
    parser.add_argument("--finetune-lr", type=float, default=None,
                        help="fine-tuning learning rate (default: the zoo schedule's); the fine-tuned weights "
                             "are kept only if the validation error does not rise (CompressConfig.finetune_guard)")
    parser.add_argument("--finetune-optimizer", choices=("adam", "sgd"), default=None,
                        help="fine-tuning optimiser (default: the zoo schedule's, Adam); sgd: Nesterov momentum 0.9")
    parser.add_argument("--finetune-weight-decay", type=float, default=None,
                        help="fine-tuning L2 penalty (default: the zoo schedule's, 0)")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="fine-tune with knowledge distillation from the dense model, this weight alpha on the "
                             "soft term (bayescomp.distill; 0: labels only)")
    parser.add_argument("--distill-temperature", type=float, default=4.0, help="its softening temperature")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of the Bayesian phase and the fine-tuning (noise, data order); the data split "
                             "keeps the run's seed, 0, which --pretrained needs (the dense weights saw that split)")
    parser.add_argument("--threads", type=int, default=None)
    return parser


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration from the command line: the zoo's schedules with the flags' changes applied."""
    config = RunConfig(model=args.model, data="cifar10", method=args.method, pretrained=args.pretrained,
                       compress=CompressConfig(tolerance_pct=args.tolerance, bits_reduce="max",
                                               search_val_size=args.search_val_size, search=args.search,
                                               search_bn_images=args.search_bn_images,
                                               target_macs=args.target_macs,
                                               target_weights=args.target_weights,
                                               budget_order=args.budget_order, cut_weights=args.cut_weights,
                                               channel_score=args.channel_score, round_to=args.round_to))
    if args.group_kl_scale is not None:
        config.prior = {**config.prior, "group_kl_scale": args.group_kl_scale}
    if args.dense_epochs is not None:
        config.dense = replace(config.dense, epochs=args.dense_epochs)
    if args.epochs is not None:
        config.bayes = replace(config.bayes, epochs=args.epochs)
    if args.lr is not None:
        config.bayes = replace(config.bayes, lr=args.lr)
    if args.finetune_epochs:
        config.finetune = replace(config.finetune, epochs=args.finetune_epochs, augment="crop_flip")
    if args.finetune_lr is not None:
        config.finetune = replace(config.finetune, lr=args.finetune_lr)
    if args.finetune_optimizer is not None:
        config.finetune = replace(config.finetune, optimizer=args.finetune_optimizer)
    if args.finetune_weight_decay is not None:
        config.finetune = replace(config.finetune, weight_decay=args.finetune_weight_decay)
    if args.distill:
        config.finetune = replace(config.finetune, distill=args.distill,
                                  distill_temperature=args.distill_temperature)
    if args.train_seed is not None:
        config.bayes = replace(config.bayes, seed=args.train_seed)
        config.finetune = replace(config.finetune, seed=args.train_seed)
    return config


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = build_config(args)
    run_dir = Path(args.run_dir or f"runs/cifar/{args.model}_cifar10_{args.method}")
    report = run(config, run_dir, progress=False, command=this_command(), device=args.device, amp=args.amp,
                 cuda_graphs=args.cuda_graphs)

    model, _ = load_packed(run_dir / "compressed.bcz")
    images = load_dataset("cifar10", test_subset=64).test.example(64)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_model(model, "onnx", Path(tmp) / "compressed.onnx", images)
    extra = {"onnx_max_abs_diff": exported["max_abs_diff"], "onnx_max_rel_diff": exported["max_rel_diff"],
             "hardware": args.hardware or f"{os.cpu_count()}-core CPU" + (f", {args.device}" if args.device else ""),
             "dense_epochs": 0 if args.pretrained else config.dense.epochs, "epochs": config.bayes.epochs,
             "pretrained": args.pretrained, "finetune_epochs": config.finetune.epochs,
             **({"train_seed": args.train_seed} if args.train_seed is not None else {}),
             **({"finetune_distill": {"alpha": args.distill, "temperature": args.distill_temperature}}
                if args.distill else {})}
    path = publish(report, run_dir, extra, suffix=f"_{args.variant}" if args.variant else "")
    print(f"{args.model} {args.method}: test error {report['test_error_pct']:.2f}% (dense "
          f"{report['dense_test_error_pct']:.2f}%), {report['compression_architecture']:.1f}x architecture, "
          f"{report['compression_bits']:.1f}x with bits, ONNX max |diff| {exported['max_abs_diff']:.1e}; wrote {path}")
    print(json.dumps({k: report[k] for k in ("kept_architecture", "flops_dense", "flops_compressed")}, indent=1))


if __name__ == "__main__":
    main()
