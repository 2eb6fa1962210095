"""Latency of the committed compressed LeNet-5 and LeNet-300-100 (BC-GNJ) against their dense architectures, in
eager PyTorch and in onnxruntime (CPU provider, same thread count), at batch 1 and 256, interleaved rounds.

The dense model is the zoo architecture with fresh weights (latency does not depend on the weight values); the
compressed model is the committed ``.bcz`` loaded as a plain PyTorch model. Both are exported to ONNX with the
TorchScript exporter and their onnxruntime outputs checked against PyTorch before timing. Layers whose
posterior bit width is <= 8 are also tried in int8 (onnxruntime QDQ, static calibration on 512 training images),
timed against float32 ONNX and evaluated on the full test set of the file's data. Writes
``results/runtime_latency.json`` and ``.md`` (``--out`` names another pair, for other ``--files``); the machine's
load average is recorded beside the figures.

    python -m benchmarks.runtime_latency [--threads 1] [--rounds 15]
    python -m benchmarks.runtime_latency --files resnet20_cifar10_gnj_macs2_w3_greedy_bn_kd.bcz \
        --out runtime_latency_resnet20 --rounds 7 --repeats 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bayescomp import export
from bayescomp.compress.packed import load_packed
from bayescomp.data import load_dataset
from bayescomp.runtime import (
    bench_file,
    format_runtime_latency,
    int8_dot_product_native,
    int8_qdq_session,
    time_sessions,
)
from benchmarks._common import RESULTS, this_command

FILES = ("lenet5_mnist_gnj.bcz", "lenet300_mnist_gnj.bcz")
INT8_MARGIN = 0.05  # int8 is offered at a batch size only where its median latency is at least 5 % lower
ACCEPT = 4.0  # issue 19: compressed LeNet-5 at batch 1 through onnxruntime >= 4x faster than the dense model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median over them)")
    parser.add_argument("--repeats", type=int, default=600, help="timed passes per pair at batch 1, all rounds")
    parser.add_argument("--files", nargs="+", default=list(FILES),
                        help="committed .bcz files in benchmarks/results to time (default: the two LeNet BC-GNJ files)")
    parser.add_argument("--out", default="runtime_latency", help="name of the JSON/markdown pair in benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    record = {"command": this_command(), "threads": args.threads, "rounds": args.rounds,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_average_before": list(os.getloadavg()), "models": {}}
    for name in args.files:
        result = bench_file(RESULTS / name, rounds=args.rounds, threads=args.threads, repeats=args.repeats)
        result["file"] = f"benchmarks/results/{name}"
        record["models"][name.removesuffix(".bcz")] = result
        print(name, json.dumps(result["median_ms"]), flush=True)
    for name in args.files:
        record["models"][name.removesuffix(".bcz")]["int8_qdq"] = int8_variant(RESULTS / name, args)
    record["load_average_after"] = list(os.getloadavg())
    lenet5 = record["models"].get("lenet5_mnist_gnj")
    if lenet5 is not None:
        record["acceptance"] = {
            "criterion": f"compressed LeNet-5, batch 1, onnxruntime: dense / compressed latency >= {ACCEPT}",
            "onnxruntime_vs_onnxruntime_dense": lenet5["speedup"]["onnxruntime"]["batch_1"],
            "onnxruntime_vs_eager_dense": lenet5["speedup_vs_dense_eager"]["onnxruntime"]["batch_1"],
            "eager_vs_eager_dense": lenet5["speedup"]["eager"]["batch_1"],
            "met": lenet5["speedup"]["onnxruntime"]["batch_1"] >= ACCEPT}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{args.out}.md").write_text(render(record))
    print(render(record))


def int8_variant(path: Path, args: argparse.Namespace) -> dict:
    """int8 QDQ for the layers whose posterior bit width is <= 8, timed against the float32 ONNX model
    (interleaved) and evaluated on the full test set; offered at a batch size only where at least
    ``INT8_MARGIN`` faster."""
    model, meta = load_packed(path)
    bits = {int(k): int(v) for k, v in meta["_packed"]["bits"].items()}
    out: dict = {"bits_per_layer": bits, "margin": INT8_MARGIN, "weights_7_bit": not int8_dot_product_native()}
    data = load_dataset(meta["run"]["data"])
    with tempfile.TemporaryDirectory() as folder:
        int8, nodes = int8_qdq_session(model, bits, data.train.example(512), folder, args.threads)
        out["layers"] = nodes
        if int8 is None:
            out["note"] = "no layer has a posterior bit width <= 8: nothing to quantise to int8"
            return out
        onnx_path = export.export_onnx(model, data.test.example(2), Path(folder) / "f.onnx", exporter="torchscript")
        float32 = export.onnx_session(onnx_path, args.threads)
        shape = tuple(data.input_shape)
        out["median_ms"] = time_sessions({"float32": float32, "int8": int8}, shape, rounds=args.rounds,
                                         repeats=args.repeats)
        images = data.test.example(len(data.test))
        out["test_error_pct"] = {label: float((export.onnx_outputs(s, images).argmax(1) != data.test.labels)
                                              .double().mean() * 100) for label, s in
                                 (("float32", float32), ("int8", int8))}
    ms = out["median_ms"]
    out["offered"] = {k: ms["int8"][k] <= (1 - INT8_MARGIN) * ms["float32"][k] for k in ms["float32"]}
    return out


def render(record: dict) -> str:
    lines = [f"# Latency by runtime: eager PyTorch vs onnxruntime, dense vs compressed ({', '.join(record['models'])})",
             "",
             (f"`{record['command']}`; torch {record['torch']}, onnxruntime {record['onnxruntime']}, CPU "
              f"{record['cpu']} ({record['cpu_count']} cores), {record['threads']} thread(s), float32; load average "
              f"before {record['load_average_before'][0]:.2f}, after {record['load_average_after'][0]:.2f} (a "
              "shared machine: absolute times vary with it, ratios of interleaved rounds much less)."), "",
             "Dense = the zoo architecture (fresh weights); compressed = the committed .bcz.", ""]
    for stem, result in record["models"].items():
        lines += [f"## {stem}", "", f"ONNX outputs vs PyTorch: max abs difference {result['onnx_max_abs_diff']:.2g}",
                  ""] + format_runtime_latency(result) + [""]
    lines += ["## int8 (onnxruntime QDQ) for layers with a posterior bit width <= 8", ""]
    for stem, result in record["models"].items():
        q = result["int8_qdq"]
        if not q["layers"]:
            lines.append(f"- {stem}: bits per layer {q['bits_per_layer']}; {q['note']}.")
            continue
        ms, err = q["median_ms"], q["test_error_pct"]
        lines.append(f"- {stem}: int8 on {', '.join(q['layers'])} (bits per layer {q['bits_per_layer']}); "
                     + "; ".join(f"batch {k.removeprefix('batch_')}: float32 {ms['float32'][k]:.3f} ms, int8 "
                                 f"{ms['int8'][k]:.3f} ms ({'offered' if q['offered'][k] else 'not offered'})"
                                 for k in ms["float32"])
                     + f"; test error float32 {err['float32']:.2f} %, int8 {err['int8']:.2f} % "
                     f"(offered only where >= {100 * q['margin']:.0f} % faster).")
    acc = record.get("acceptance")
    if acc is None:
        return "\n".join(lines + [""])
    lines += ["", "## Acceptance (issue 19)", "",
              (f"{acc['criterion']}: **{acc['onnxruntime_vs_onnxruntime_dense']:.1f}x** "
               f"({'met' if acc['met'] else 'NOT met'}); against the dense model in eager PyTorch "
               f"{acc['onnxruntime_vs_eager_dense']:.1f}x; eager compressed vs eager dense "
               f"{acc['eager_vs_eager_dense']:.1f}x."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
