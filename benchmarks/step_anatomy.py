"""Where a BC-GNJ training step of LeNet-300-100 spends its time, against the plain fp32 step (CPU, interleaved).

The fast-training issue's floor for the paper's estimator (local reparameterisation, group scales z per example;
the default until 2026-12-07, ``z_sampling="example"``, which this script measures) counts multiply-accumulates:
2.83x a plain step, since the first layer needs the input gradient of both its mean and its variance products. That count prices a bf16 product like an fp32 one. This script times, in one process
with interleaved rounds and medians:

* ``plain fp32 step``: forward, cross-entropy, backward, fused Adam of the plain network;
* ``plain fp32 products``: the plain step's 8 matrix products alone (forward, weight gradients, input gradients
  where the step needs them), on tensors of the step's shapes;
* ``gnj products (bf16)``: the 18 products of a BC-GNJ step under that estimator (mean and variance, each
  forward, weight gradient and input gradient, every layer), in bfloat16 as ``--precision auto`` runs them;
* ``gnj normal draws``: the step's standard normal numbers alone (z per example on every layer's inputs and the
  pre-activation noise of every layer: 204,032 at batch 128), drawn as the layers draw them;
* the BC-GNJ step built up: forward only (no autograd), forward + backward without the KL, with the KL, and the
  whole step (fused Adam and the variance clip): each stage adds the cost of one part.

Everything is measured; the ratios are to the plain fp32 step of the same round.

    python -m benchmarks.step_anatomy [--rounds 9] [--steps 20] [--threads 1]

Writes ``benchmarks/results/step_anatomy_lenet300_mnist.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bayescomp import bayesify
from bayescomp.data import load_dataset
from bayescomp.models import create_model
from bayescomp.objective import collect_kl
from bayescomp.priors.base import bayesian_layers
from bayescomp.train import AutocastForward, TrainConfig, make_optimizer, native_bf16
from benchmarks._common import RESULTS, this_command, write_result

BATCH = 128
WIDTHS = (784, 300, 100, 10)


def _products(dtype: torch.dtype, per_layer: list[tuple[int, int]]) -> callable:
    """A function running the given products: per layer (forward + weight-gradient count, input-gradient count)."""
    tensors = []
    for (n_in, n_out), (pairs, input_grads) in zip(zip(WIDTHS[:-1], WIDTHS[1:]), per_layer):
        x, w = torch.randn(BATCH, n_in, dtype=dtype), torch.randn(n_out, n_in, dtype=dtype)
        b, g = torch.randn(n_out, dtype=dtype), torch.randn(BATCH, n_out, dtype=dtype)
        tensors.append((x, w, b, g, pairs, input_grads))

    def run() -> None:
        for x, w, b, g, pairs, input_grads in tensors:
            for _ in range(pairs):
                torch.addmm(b, x, w.t())   # forward
                torch.mm(g.t(), x)         # weight gradient
            for _ in range(input_grads):
                torch.mm(g, w)             # input gradient
    return run


def measure(rounds: int, steps: int) -> dict:
    data = load_dataset("mnist")
    torch.manual_seed(0)
    plain = create_model("lenet300", data.num_classes, data.input_shape, data.mean, data.std)
    gnj = bayesify(plain, "gnj", {"z_sampling": "example"})  # the estimator the record and its floor describe
    gnj.train()
    forward = AutocastForward(gnj, "cpu") if native_bf16() else gnj
    images = data.train.images[:BATCH * steps].float()
    labels = data.train.labels[:BATCH * steps].long()
    plain_opt = make_optimizer(plain, TrainConfig(epochs=1, lr=1e-3))
    gnj_opt = make_optimizer(gnj, TrainConfig(epochs=1, lr=1e-3))
    n_train = len(data.train)
    plain_products = _products(torch.float32, [(1, 0), (1, 1), (1, 1)])  # first layer: no input gradient
    gnj_products = _products(torch.bfloat16 if native_bf16() else torch.float32, [(2, 2), (2, 2), (2, 2)])

    def batches():
        for i in range(steps):
            yield images[i * BATCH:(i + 1) * BATCH], labels[i * BATCH:(i + 1) * BATCH]

    def plain_step() -> None:
        for x, y in batches():
            loss = F.cross_entropy(plain(x), y)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()

    def gnj_stage(stage: str):
        def run() -> None:
            for x, y in batches():
                if stage == "forward":
                    with torch.no_grad():
                        forward(x)
                    continue
                loss = F.cross_entropy(forward(x), y)
                if stage != "no_kl":
                    loss = loss + collect_kl(gnj) / n_train
                gnj_opt.zero_grad(set_to_none=True)
                loss.backward()
                if stage == "step":
                    gnj_opt.step()
                    for _, layer in bayesian_layers(gnj):
                        layer.apply_constraints()
        return run

    def draws() -> None:
        for _ in range(steps):
            for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:]):
                torch.randn(BATCH, n_in)
                torch.randn(BATCH, n_out)

    parts = {"plain fp32 step": plain_step, "plain fp32 products": lambda: [plain_products() for _ in range(steps)],
             "gnj products (bf16)": lambda: [gnj_products() for _ in range(steps)], "gnj normal draws": draws,
             "gnj forward only": gnj_stage("forward"), "gnj forward + backward, no KL": gnj_stage("no_kl"),
             "gnj forward + backward + KL": gnj_stage("kl"), "gnj whole step (+ Adam, clip)": gnj_stage("step")}
    times: dict[str, list[float]] = {name: [] for name in parts}
    for fn in parts.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in parts.items():
            started = time.process_time()
            fn()
            times[name].append(1000.0 * (time.process_time() - started) / steps)
    plain_ms = statistics.median(times["plain fp32 step"])
    rows = {name: {"ms_per_step": statistics.median(t), "ratio_to_plain_fp32_step": statistics.median(t) / plain_ms,
                   "ms_per_step_all": t} for name, t in times.items()}
    return {"model": "lenet300", "data": "mnist", "batch_size": BATCH, "steps_per_measurement": steps,
            "rounds": rounds, "native_bf16": native_bf16(), "torch_threads": torch.get_num_threads(),
            "clock": "process CPU time", "rows": rows, "command": this_command(), "torch": torch.__version__}


def markdown(record: dict) -> str:
    lines = [f"# Anatomy of a BC-GNJ step: LeNet-300-100 on MNIST, batch {record['batch_size']}", "",
             f"Command: `{record['command']}` (torch {record['torch']}, {record['torch_threads']} thread(s), native "
             f"bf16: {record['native_bf16']}; {record['rounds']} interleaved rounds of {record['steps_per_measurement']}"
             f" steps, medians of {record['clock']}).", "",
             "| part | ms / step | x plain fp32 step |", "|---|---|---|"]
    lines += [f"| {name} | {row['ms_per_step']:.2f} | {row['ratio_to_plain_fp32_step']:.2f}x |"
              for name, row in record["rows"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = measure(args.rounds, args.steps)
    stem = RESULTS / "step_anatomy_lenet300_mnist"
    write_result(stem, record, markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
