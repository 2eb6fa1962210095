"""Training cost of a Bayesian epoch against a plain epoch of the same model (LeNet-300-100, MNIST, CPU).

Local reparameterisation needs two matrix products per layer (means and variances), so about 2x is the floor.
Both phases use the same data, batch size, optimiser (Adam) and thread count; each epoch is timed on its own
and the median over ``--epochs`` epochs is reported. Writes benchmarks/results/epoch_cost_<model>_mnist.json/.md.

    python benchmarks/epoch_cost.py [--model lenet300] [--epochs 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, this_command  # noqa: E402

from bayescomp import bayesify  # noqa: E402
from bayescomp.data import load_dataset  # noqa: E402
from bayescomp.models import create_model  # noqa: E402
from bayescomp.pipeline import git_commit  # noqa: E402
from bayescomp.train import TrainConfig, fit  # noqa: E402


def epoch_times(model, data, epochs: int, batch_size: int) -> list[float]:
    history = fit(model, data, TrainConfig(epochs=epochs, batch_size=batch_size), progress=False,
                  log=lambda *_: None)
    return [e["epoch_s"] for e in history.epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    data = load_dataset("mnist")
    torch.manual_seed(0)
    plain = create_model(args.model, 10, data.input_shape, data.mean, data.std)
    bayes = bayesify(plain, "gnj")
    plain_s = epoch_times(plain, data, args.epochs, args.batch_size)
    bayes_s = epoch_times(bayes, data, args.epochs, args.batch_size)
    result = {
        "model": args.model, "data": "mnist", "method": "gnj", "batch_size": args.batch_size,
        "n_train": len(data.train), "epochs_timed": args.epochs,
        "plain_epoch_s": plain_s, "bayes_epoch_s": bayes_s,
        "plain_epoch_s_median": statistics.median(plain_s), "bayes_epoch_s_median": statistics.median(bayes_s),
        "ratio": statistics.median(bayes_s) / statistics.median(plain_s),
        "threads": torch.get_num_threads(), "device": "cpu", "command": this_command(), "git_commit": git_commit(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"epoch_cost_{args.model}_mnist"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(
        f"| model | plain epoch (s) | BC-GNJ epoch (s) | ratio |\n|---|---|---|---|\n"
        f"| {args.model} | {result['plain_epoch_s_median']:.2f} | {result['bayes_epoch_s_median']:.2f} | "
        f"{result['ratio']:.2f}x |\n")
    print(json.dumps({k: result[k] for k in ("plain_epoch_s_median", "bayes_epoch_s_median", "ratio")}))


if __name__ == "__main__":
    main()
