"""Re-measure CPU latency of every committed result on an otherwise idle machine.

The benchmark runs measure latency at their end, possibly while another benchmark trains beside them; this
script measures again, one model at a time: the dense zoo model (latency does not depend on the weight values)
against the committed compressed file, loaded with ``bayescomp.load``, at batch 1 and 256, float32, on CPU with
the machine's thread count. It rewrites ``latency_ms`` in each result JSON (keeping the old figures under
``latency_ms_during_training``) and records the command.

    python -m benchmarks.latency [--threads N] [results/<stem>.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import bayescomp
from bayescomp.data import DATASETS
from bayescomp.models import create_model
from bayescomp.report import measure_latency_pair
from benchmarks._common import RESULTS, this_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", help="result JSON files (default: all with a compressed model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.results] or sorted(RESULTS.glob("*.json"))
    for path in paths:
        record = json.loads(path.read_text())
        if "compressed_file" not in record:
            continue
        spec = DATASETS[record["data"]]
        dense = create_model(record["model"], spec.num_classes, spec.input_shape, spec.mean, spec.std).eval()
        small = bayescomp.load(path.parent / record["compressed_file"])
        if "latency_ms_during_training" not in record and "latency_ms" in record:
            record["latency_ms_during_training"] = record["latency_ms"]
        record["latency_ms"] = measure_latency_pair(dense, small, spec.input_shape)
        record["latency_command"] = this_command()
        path.write_text(json.dumps(record, indent=2))
        lat = record["latency_ms"]
        print(f"{path.name}: batch 1 {lat['dense']['batch_1']:.3f} -> {lat['compressed']['batch_1']:.3f} ms "
              f"({lat['speedup']['batch_1']:.1f}x); batch 256 {lat['dense']['batch_256']:.2f} -> "
              f"{lat['compressed']['batch_256']:.2f} ms ({lat['speedup']['batch_256']:.1f}x)")


if __name__ == "__main__":
    main()
