"""BC-GNJ on MNIST: LeNet-300-100 and LeNet-5-Caffe, end to end (issue: foundation acceptance figures).

Writes benchmarks/results/<model>_mnist_gnj.{json,md,bcz} and plots. Usage:

    python -m benchmarks.gnj_mnist --models lenet300 lenet5 [--epochs-lenet300 N] [--epochs-lenet5 N]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bayescomp.compress import CompressConfig
from bayescomp.pipeline import RunConfig, run
from benchmarks._common import publish, this_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--epochs-lenet300", type=int, default=60)
    parser.add_argument("--epochs-lenet5", type=int, default=60)
    parser.add_argument("--dense-epochs", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--clip-var", type=float, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-search", action="store_true")
    parser.add_argument("--bits-reduce", default="mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-root", default="runs/bench")
    parser.add_argument("--restart", action="store_true")
    args = parser.parse_args()
    for model in args.models:
        config = RunConfig(model=model, data="mnist", method="gnj", seed=args.seed,
                           prior={"clip_var": args.clip_var} if args.clip_var else {},
                           compress=CompressConfig(tolerance_pct=args.tolerance, finetune_search=args.finetune_search,
                                                   bits_reduce=args.bits_reduce))
        config.finetune = replace(config.finetune, epochs=args.finetune_epochs, lr=args.finetune_lr,
                                  lr_schedule="cosine")
        config.bayes = replace(config.bayes, epochs=getattr(args, f"epochs_{model}"),
                               **({"lr": args.lr} if args.lr else {}))
        if args.dense_epochs:
            config.dense = replace(config.dense, epochs=args.dense_epochs)
        run_dir = Path(args.run_root) / f"{model}_mnist_gnj"
        report = run(config, run_dir, progress=False, restart=args.restart, command=this_command())
        print(f"{model}: test error {report['test_error_pct']:.2f}% (pruned {report['test_error_pct_pruned']:.2f}%), "
              f"architecture {report['kept_architecture']}, {report['compression_architecture']:.1f}x, "
              f"bits {report['compression_bits']:.1f}x, file {report['compression_file']:.1f}x", flush=True)
        print("wrote", publish(report, run_dir))


if __name__ == "__main__":
    main()
