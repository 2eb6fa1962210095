"""What a ResNet-20 channel costs on this CPU: latency and training-step time against the stage widths.

A structured cut is sold by its multiply-accumulates, but the compressed ResNet-20 of the headline (9-18-36
channels per stage, 3.13x fewer MACs) served only ~1.5x faster than the dense 16-32-64 network. This script
separates the width from the weights: it builds ResNet-20 with uniform stage widths (random weights: time does not
depend on their values) and measures, in interleaved rounds with medians,

* eager PyTorch float32 inference at batch 1 and 256, in the NCHW layout and in channels-last (NHWC);
* onnxruntime at batch 1 and 256 (when installed);
* one training step (batch 128, forward, backward and SGD) in bf16 autocast and NHWC, what fine-tuning a cut
  network costs per step (the library's default on CPUs with native bf16).

It writes ``benchmarks/results/channel_widths_resnet20.{json,md}``::

    python -m benchmarks.channel_widths [--widths 16,32,64 12,24,48 9,18,36 8,16,32] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from bayescomp.compress.macs import count_flops
from bayescomp.data import DATASETS
from bayescomp.measure import count_weights, measure_latency
from bayescomp.mixed_precision import AutocastForward
from bayescomp.models.resnet import CifarResNet
from bayescomp.pipeline import git_commit
from bayescomp.runtime import onnx_sessions, time_sessions, to_channels_last
from benchmarks._common import RESULTS, this_command

SPEC = DATASETS["cifar10"]


def build(widths: tuple[int, int, int]) -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet(3, SPEC.num_classes, SPEC.input_shape[0], SPEC.mean, SPEC.std, widths=widths).eval()


def train_step_ms(model: CifarResNet, steps: int) -> float:
    """Median ms of a bf16 NHWC SGD step on a fixed random batch of 128 (after two warm-up steps)."""
    net = to_channels_last(model.train())
    forward = AutocastForward(net, "cpu")
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((128, *SPEC.input_shape), generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, SPEC.num_classes, (128,), generator=generator)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    net.eval()
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=["16,32,64", "12,24,48", "10,20,40", "9,18,36", "8,16,32"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = [tuple(int(w) for w in text.split(",")) for text in args.widths]
    labels = ["-".join(map(str, w)) for w in widths]
    models = {label: build(w) for label, w in zip(labels, widths)}
    nhwc = {label: to_channels_last(build(w)) for label, w in zip(labels, widths)}
    shape = SPEC.input_shape
    keys = ("nchw_b1", "nchw_b256", "nhwc_b1", "nhwc_b256", "train_bf16_nhwc")
    samples = {label: {k: [] for k in keys} for label in labels}
    for r in range(args.rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            for key, batch, net in (("nchw_b1", 1, models[label]), ("nchw_b256", 256, models[label]),
                                    ("nhwc_b1", 1, nhwc[label]), ("nhwc_b256", 256, nhwc[label])):
                stats = measure_latency(net, shape, batch, repeats=100 if batch == 1 else 10, warmup=5,
                                        max_time_s=1.5)
                samples[label][key].append(stats["median_ms"])
            samples[label]["train_bf16_nhwc"].append(train_step_ms(build(widths[labels.index(label)]),
                                                                   args.train_steps))
    with tempfile.TemporaryDirectory() as folder:
        sessions, onnx_note = onnx_sessions(models, shape, args.threads, folder)
        onnx = time_sessions(sessions, shape, rounds=args.rounds) if sessions else {}
    dense = labels[0]
    rows = []
    for label, w in zip(labels, widths):
        med = {k: statistics.median(v) for k, v in samples[label].items()}
        rows.append({"widths": list(w), "macs": count_flops(models[label], shape),
                     "weights": count_weights(models[label]), **{f"{k}_ms": v for k, v in med.items()},
                     **{f"onnx_b{b}_ms": onnx.get(label, {}).get(f"batch_{b}") for b in (1, 256)}})
    base = rows[0]
    for row in rows:
        row["mac_ratio"] = base["macs"] / row["macs"]
        for key in [k for k in row if k.endswith("_ms")]:
            row[key.replace("_ms", "_speedup")] = None if row[key] is None else base[key] / row[key]
    record = {"model": "resnet20", "data": "cifar10", "threads": args.threads, "rounds": args.rounds,
              "torch": torch.__version__, "dense": dense, "rows": rows, **onnx_note,
              "command": this_command(), "git_commit": git_commit()}
    stem = RESULTS / "channel_widths_resnet20"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# ResNet-20 stage widths: latency and training step against MACs ({args.threads} threads, "
             f"{args.rounds} interleaved rounds, medians; torch {torch.__version__})", "",
             "Uniform stage widths, random weights. Speed-ups are against the dense 16-32-64 network in the same "
             "column; a column's speed-up equal to the MAC ratio would mean time proportional to MACs.", "",
             "| widths | MACs | x fewer MACs | eager NCHW b1 | eager NCHW b256 | eager NHWC b1 | eager NHWC b256 "
             "| onnxruntime b1 | onnxruntime b256 | bf16 NHWC train step (b128) |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(row, key):
        ms = row.get(f"{key}_ms")
        return "n/a" if ms is None else f"{ms:.2f} ms ({row[f'{key}_speedup']:.2f}x)"

    for row in rows:
        lines.append(f"| {'-'.join(map(str, row['widths']))} | {row['macs']:,} | {row['mac_ratio']:.2f}x | "
                     + " | ".join(cell(row, k) for k in ("nchw_b1", "nchw_b256", "nhwc_b1", "nhwc_b256",
                                                        "onnx_b1", "onnx_b256", "train_bf16_nhwc")) + " |")
    lines += ["", f"Command: `{record['command']}`"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
