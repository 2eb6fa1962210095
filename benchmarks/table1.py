"""The MNIST Table 1: every method on LeNet-300-100 and LeNet-5-Caffe, measured the same way, side by side.

Runs BC-GHS, Sparse VD and magnitude pruning (BC-GNJ's runs come from ``benchmarks/gnj_mnist.py`` with the same
recipe and are re-used from ``benchmarks/results``), publishes every run as
``benchmarks/results/<model>_mnist_<method>.{json,md,bcz}`` and writes ``benchmarks/results/table1.{json,md}``
plus the comparison plot ``benchmarks/results/plots/table1_error_vs_compression.png``. Usage::

    python benchmarks/table1.py                      # everything (about an hour and a half on 2 CPU cores)
    python benchmarks/table1.py --models lenet5 --methods ghs
    python benchmarks/table1.py --table-only         # rebuild the table from the committed results
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, publish, this_command  # noqa: E402

from bayescomp.compress import CompressConfig  # noqa: E402
from bayescomp.pipeline import RunConfig, run  # noqa: E402

MODELS = ("lenet300", "lenet5")
METHODS = ("ghs", "svd", "magnitude")

#: Per (model, method): Bayesian epochs, prior options, search tolerance (points of validation error), fine-tuning
#: epochs and learning rate. GHS uses BC-GNJ's recipe from benchmarks/gnj_mnist.py so the two priors compare
#: like for like; Sparse VD follows the authors' scripts (Adam 1e-3, linear decay, KL warm-up), shortened.
RECIPES: dict[tuple[str, str], dict] = {
    ("lenet300", "ghs"): dict(epochs=60, prior={"clip_var": 0.1}, tolerance=0.4, finetune=20, finetune_lr=1e-3),
    ("lenet5", "ghs"): dict(epochs=90, prior={"clip_var": 0.5}, tolerance=1.0, finetune=10, finetune_lr=1e-4),
    ("lenet300", "svd"): dict(epochs=100, prior={}, lr=1e-3, lr_schedule="linear", warmup=10, finetune=0),
    ("lenet5", "svd"): dict(epochs=60, prior={}, lr=1e-3, lr_schedule="linear", warmup=10, finetune=0),
}


def build_config(model: str, method: str, seed: int = 0) -> RunConfig:
    recipe = RECIPES[(model, method)]
    config = RunConfig(model=model, data="mnist", method=method, seed=seed, prior=recipe.get("prior", {}),
                       compress=CompressConfig(tolerance_pct=recipe.get("tolerance", 0.2), bits_reduce="max"))
    config.bayes = replace(config.bayes, epochs=recipe["epochs"], lr=recipe.get("lr", config.bayes.lr),
                           lr_schedule=recipe.get("lr_schedule", config.bayes.lr_schedule),
                           kl_warmup_epochs=recipe.get("warmup", config.bayes.kl_warmup_epochs))
    config.finetune = replace(config.finetune, epochs=recipe.get("finetune", 0),
                              lr=recipe.get("finetune_lr", 1e-3), lr_schedule="cosine")
    return config


def run_bayesian(model: str, method: str, run_root: Path, restart: bool) -> dict:
    config = build_config(model, method)
    run_dir = run_root / f"{model}_mnist_{method}"
    report = run(config, run_dir, progress=False, restart=restart, command=this_command())
    print(f"{model} {method}: test error {report['test_error_pct']:.2f}%, architecture {report['kept_architecture']}, "
          f"{report['compression_architecture']:.1f}x, bits {report['compression_bits']:.1f}x", flush=True)
    print("wrote", publish(report, run_dir), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--run-root", default="runs/table1")
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.table_only:
        for model in args.models:
            for method in args.methods:
                if method != "magnitude":
                    run_bayesian(model, method, Path(args.run_root), args.restart)
    print(f"wall time {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
