"""Cost of Turbo-VBI's module B (loopy BP on every layer's support grid) against one training epoch, LeNet-5/MNIST.

Measures, on the CPU with the current thread count:

* ``module_b_sweep_s``: one BP sweep (all four message directions) over all of LeNet-5's layers (median of 20);
* ``turbo_iteration_s``: one full Turbo iteration over all layers (rho- and s-steps plus ``bp_iterations`` sweeps);
* ``epoch_s``: one Turbo-VBI training epoch on the 55,000 training images (median of ``--epochs``), which includes
  the Turbo iterations it runs (one every ``update_every`` steps);

and the ratios. Writes ``benchmarks/results/turbo_module_b_lenet5_mnist.{json,md}``::

    python -m benchmarks.turbo_module_b [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from bayescomp import bayesify
from bayescomp.data import load_dataset
from bayescomp.models import create_model
from bayescomp.pipeline import git_commit
from bayescomp.priors.base import bayesian_layers
from bayescomp.train import TrainConfig, fit
from benchmarks._common import RESULTS, this_command


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    data = load_dataset("mnist")
    torch.manual_seed(0)
    model = bayesify(create_model("lenet5", 10, data.input_shape, data.mean, data.std), "turbo")
    layers = [layer for _, layer in bayesian_layers(model)]
    per_layer = {name: layer.time_module_b_sweep(repeats=20) for name, layer in bayesian_layers(model)}
    sweep_s = sum(per_layer.values())
    iteration_s = median_seconds(lambda: [layer.turbo_update() for layer in layers], 10)
    history = fit(model, data, TrainConfig(epochs=args.epochs, batch_size=args.batch_size), progress=False,
                  log=lambda *_: None)
    epoch_s = statistics.median(e["epoch_s"] for e in history.epochs)
    config = layers[0].config
    steps = math.ceil(len(data.train) / args.batch_size)
    iterations_per_epoch = steps // config.update_every if config.update_every else 1
    result = {
        "model": "lenet5", "data": "mnist", "method": "turbo",
        "grids": {name: list(layer.support_log_odds.shape) for name, layer in bayesian_layers(model)},
        "module_b_sweep_s": sweep_s, "module_b_sweep_s_per_layer": per_layer,
        "turbo_iteration_s": iteration_s, "bp_iterations": config.bp_iterations, "update_every": config.update_every,
        "turbo_iterations_per_epoch": iterations_per_epoch, "epoch_s": epoch_s,
        "sweep_fraction_of_epoch": sweep_s / epoch_s,
        "turbo_fraction_of_epoch": iterations_per_epoch * iteration_s / epoch_s,
        "epochs_timed": args.epochs, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "device": "cpu", "command": this_command(), "git_commit": git_commit(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "turbo_module_b_lenet5_mnist"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(
        "| one BP sweep, all layers (ms) | one Turbo iteration, all layers (ms) | training epoch (s) | "
        "sweep / epoch | Turbo iterations per epoch / epoch |\n|---|---|---|---|---|\n"
        f"| {1e3 * sweep_s:.2f} | {1e3 * iteration_s:.1f} | {epoch_s:.1f} | {100 * result['sweep_fraction_of_epoch']:.3f} % "
        f"| {100 * result['turbo_fraction_of_epoch']:.2f} % ({iterations_per_epoch} iterations) |\n"
        f"\nLeNet-5-Caffe grids {result['grids']}; CPU, {result['threads']} threads; `{result['command']}`\n")
    print(json.dumps({k: result[k] for k in ("module_b_sweep_s", "turbo_iteration_s", "epoch_s",
                                             "sweep_fraction_of_epoch", "turbo_fraction_of_epoch")}))


if __name__ == "__main__":
    main()
