"""ONNX export of every zoo model and of the committed compressed models: equality with PyTorch (onnxruntime) and
onnxruntime latency of compressed versus dense.

For each zoo model the dense network (freshly initialised, its batch-norm statistics computed on 256 training
images: equality and latency do not depend on the trained weights) is exported and compared with PyTorch on real test images of its data set; each compressed model committed in
``benchmarks/results/<model>_<data>_<method>.bcz`` is exported the same way, and both are timed in onnxruntime
(CPU execution provider) at batch 1 and 64 with 1 and 2 threads (median of repeated runs after a warm-up).
Writes ``benchmarks/results/onnx_<model>_<data>.json`` and ``.md``.

    python -m benchmarks.onnx_export                 # every zoo model
    python -m benchmarks.onnx_export --models lenet5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bayescomp.compress.packed import load_packed
from bayescomp.data import load_dataset
from bayescomp.export import export_model, onnx_outputs, onnx_session
from bayescomp.measure import count_flops
from bayescomp.models import MODELS, create_model
from bayescomp.pipeline import git_commit
from benchmarks._common import RESULTS, this_command


def ort_latency_ms(path: Path, shape: tuple[int, ...], batch: int, threads: int, repeats: int) -> float:
    session = onnx_session(path, threads)
    images = torch.rand(batch, *shape)
    for _ in range(5):
        onnx_outputs(session, images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        onnx_outputs(session, images)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Batch-norm running statistics from real images (no weight changes), as a trained network would have them;
    freshly initialised statistics let a deep residual stack grow its activations to logits of 1e4 and more."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in images.split(64):
            model(batch)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def float64_errors(model: torch.nn.Module, path: Path, images: torch.Tensor) -> dict[str, float]:
    """How far PyTorch float32 and onnxruntime float32 each are from the same network run in float64."""
    import copy

    with torch.no_grad():
        exact = copy.deepcopy(model).double()(images.double())
        return {"torch_float32_vs_float64": float((model(images).double() - exact).abs().max()),
                "onnxruntime_vs_float64": float((onnx_outputs(path, images).double() - exact).abs().max()),
                "max_abs_logit": float(exact.abs().max())}


def latencies(path: Path, shape: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for batch, repeats in ((1, 200), (64, 20)):
        for threads in (1, 2):
            out[f"batch{batch}_threads{threads}"] = ort_latency_ms(path, shape, batch, threads, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=sorted(MODELS))
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    workdir = Path(tempfile.mkdtemp(prefix="onnx_bench_"))
    for key in args.models:
        data_name = MODELS[key].default_data
        data = load_dataset(data_name, test_subset=args.examples)
        images = data.test.example(args.examples)
        shape = tuple(data.input_shape)
        dense = create_model(key, data.num_classes, shape, data.mean, data.std).eval()
        calibrate_batchnorm(dense, data.train.example(256))
        dense_export = export_model(dense, "onnx", workdir / f"{key}_dense.onnx", images, args.exporter)
        dense_latency = latencies(Path(dense_export["path"]), shape)
        record = {
            "model": key, "data": data_name, "exporter": args.exporter, "check_examples": int(images.shape[0]),
            "onnx_max_abs_diff": dense_export["max_abs_diff"], "onnx_max_rel_diff": dense_export["max_rel_diff"],
            "float64_check": float64_errors(dense, Path(dense_export["path"]), images),
            "onnx_bytes_dense": dense_export["bytes"],
            "ort_latency_ms_dense": dense_latency, "compressed": [],
            "command": this_command(), "git_commit": git_commit(), "device": "2-core CPU (onnxruntime CPU provider)",
            "onnxruntime_version": __import__("onnxruntime").__version__, "torch_version": torch.__version__,
        }
        print(f"{key}: dense ONNX max |diff| {dense_export['max_abs_diff']:.2e}, latency {dense_latency}")
        for bcz in sorted(RESULTS.glob(f"{key}_{data_name}_*.bcz")):
            model, _ = load_packed(bcz)
            exported = export_model(model, "onnx", workdir / f"{bcz.stem}.onnx", images, args.exporter)
            lat = latencies(Path(exported["path"]), shape)
            record["compressed"].append({
                "file": bcz.name, "method": bcz.stem.split("_")[-1], "onnx_max_abs_diff": exported["max_abs_diff"],
                "onnx_max_rel_diff": exported["max_rel_diff"],
                "float64_check": float64_errors(model, Path(exported["path"]), images),
                "onnx_bytes": exported["bytes"], "ort_latency_ms": lat,
                "speedup": {k: dense_latency[k] / v for k, v in lat.items()},
                "flops_dense": count_flops(dense, shape), "flops_compressed": count_flops(model, shape),
            })
            print(f"  {bcz.name}: max |diff| {exported['max_abs_diff']:.2e}, latency {lat}")
        record["onnx_max_abs_diff_all"] = max([record["onnx_max_abs_diff"]]
                                              + [c["onnx_max_abs_diff"] for c in record["compressed"]])
        stem = f"onnx_{key}_{data_name}"
        (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
        (RESULTS / f"{stem}.md").write_text(render(record))


def render(record: dict) -> str:
    lines = [f"# ONNX export: {record['model']} on {record['data']}", "",
             f"Dense: max |ONNX - PyTorch| = {record['onnx_max_abs_diff']:.2e} on {record['check_examples']} test "
             f"images ({record['exporter']} exporter, onnxruntime {record['onnxruntime_version']}).", "",
             "Max abs diff: ONNX (onnxruntime) against PyTorch logits; in brackets, each one's distance from the same "
             "network run in float64 (PyTorch | onnxruntime).", "",
             "| model | max abs diff | ms, batch 1, 1 thread | ms, batch 1, 2 threads | ms, batch 64, 1 thread "
             "| ms, batch 64, 2 threads |", "|---|---|---|---|---|---|"]
    keys = ["batch1_threads1", "batch1_threads2", "batch64_threads1", "batch64_threads2"]
    dense = record["ort_latency_ms_dense"]
    lines.append(f"| dense | {_diff(record)} | " + " | ".join(f"{dense[k]:.3f}" for k in keys) + " |")
    for c in record["compressed"]:
        lat = c["ort_latency_ms"]
        lines.append(f"| {c['file']} | {_diff(c)} | "
                     + " | ".join(f"{lat[k]:.3f} ({c['speedup'][k]:.1f}x)" for k in keys) + " |")
    lines += ["", f"Command: `{record['command']}`", ""]
    return "\n".join(lines)


def _diff(entry: dict) -> str:
    check = entry["float64_check"]
    return (f"{entry['onnx_max_abs_diff']:.1e} ({check['torch_float32_vs_float64']:.1e} | "
            f"{check['onnxruntime_vs_float64']:.1e})")


if __name__ == "__main__":
    main()
