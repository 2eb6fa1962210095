"""Latency of the committed compressed LeNet-5 and LeNet-300-100 (BC-GNJ) against their dense architectures, in
eager PyTorch and in onnxruntime (CPU provider, same thread count), at batch 1 and 256, interleaved rounds.

The dense model is the zoo architecture with fresh weights (latency does not depend on the weight values); the
compressed model is the committed ``.bcz`` loaded as a plain PyTorch model. Both are exported to ONNX with the
TorchScript exporter and their onnxruntime outputs checked against PyTorch before timing. Writes
``results/runtime_latency.json`` and ``.md``; the machine's load average is recorded beside the figures.

    python -m benchmarks.runtime_latency [--threads 1] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bayescomp.runtime import bench_file, format_runtime_latency
from benchmarks._common import RESULTS, this_command

FILES = ("lenet5_mnist_gnj.bcz", "lenet300_mnist_gnj.bcz")
ACCEPT = 4.0  # issue 19: compressed LeNet-5 at batch 1 through onnxruntime >= 4x faster than the dense model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median over them)")
    parser.add_argument("--repeats", type=int, default=600, help="timed passes per pair at batch 1, all rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    record = {"command": this_command(), "threads": args.threads, "rounds": args.rounds,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_average_before": list(os.getloadavg()), "models": {}}
    for name in FILES:
        result = bench_file(RESULTS / name, rounds=args.rounds, threads=args.threads, repeats=args.repeats)
        result["file"] = f"benchmarks/results/{name}"
        record["models"][name.removesuffix(".bcz")] = result
        print(name, json.dumps(result["median_ms"]), flush=True)
    record["load_average_after"] = list(os.getloadavg())
    lenet5 = record["models"]["lenet5_mnist_gnj"]
    record["acceptance"] = {
        "criterion": f"compressed LeNet-5, batch 1, onnxruntime: dense / compressed latency >= {ACCEPT}",
        "onnxruntime_vs_onnxruntime_dense": lenet5["speedup"]["onnxruntime"]["batch_1"],
        "onnxruntime_vs_eager_dense": lenet5["speedup_vs_dense_eager"]["onnxruntime"]["batch_1"],
        "eager_vs_eager_dense": lenet5["speedup"]["eager"]["batch_1"],
        "met": lenet5["speedup"]["onnxruntime"]["batch_1"] >= ACCEPT}
    (RESULTS / "runtime_latency.json").write_text(json.dumps(record, indent=2))
    (RESULTS / "runtime_latency.md").write_text(render(record))
    print(render(record))


def render(record: dict) -> str:
    acc = record["acceptance"]
    lines = ["# Latency by runtime: eager PyTorch vs onnxruntime, dense vs compressed (BC-GNJ)", "",
             (f"`{record['command']}`; torch {record['torch']}, onnxruntime {record['onnxruntime']}, CPU "
              f"{record['cpu']} ({record['cpu_count']} cores), {record['threads']} thread(s), float32; load average "
              f"before {record['load_average_before'][0]:.2f}, after {record['load_average_after'][0]:.2f} (a "
              "shared machine: absolute times vary with it, ratios of interleaved rounds much less)."), "",
             "Dense = the zoo architecture (fresh weights); compressed = the committed .bcz.", ""]
    for stem, result in record["models"].items():
        lines += [f"## {stem}", "", f"ONNX outputs vs PyTorch: max abs difference {result['onnx_max_abs_diff']:.2g}",
                  ""] + format_runtime_latency(result) + [""]
    lines += ["## Acceptance (issue 19)", "",
              (f"{acc['criterion']}: **{acc['onnxruntime_vs_onnxruntime_dense']:.1f}x** "
               f"({'met' if acc['met'] else 'NOT met'}); against the dense model in eager PyTorch "
               f"{acc['onnxruntime_vs_eager_dense']:.1f}x; eager compressed vs eager dense "
               f"{acc['eager_vs_eager_dense']:.1f}x."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
