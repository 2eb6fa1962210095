"""Head-to-head CPU latency of committed compressed models, interleaved so that machine noise hits all alike.

A single latency figure on a shared 2-core VM moves by up to 2x between runs; comparing two methods' models from
two separate measurements can then say anything. This script loads the committed files of one model for several
methods and measures them in rounds (every round times every model once, in rotating order), at batch 1 and 256,
float32, on the machine's thread count and on one thread. It reports each model's median over rounds and the
range, and writes ``benchmarks/results/latency_compare_<model>_mnist.{json,md}``::

    python -m benchmarks.latency_compare --model lenet5 --methods gnj turbo svd [--rounds 9]

``--stems`` compares any committed results by file stem instead (e.g. the blind reruns,
``lenet5_mnist_turbo_blind30``), written as ``latency_compare_<model>_mnist_<name>.{json,md}`` (``--name``)::

    python -m benchmarks.latency_compare --model lenet5 --name blind --stems lenet5_mnist_gnj_blind200 \
        lenet5_mnist_turbo_blind30
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import bayescomp
from bayescomp.data import DATASETS
from bayescomp.measure import measure_latency
from bayescomp.pipeline import git_commit
from benchmarks._common import RESULTS, this_command

SETTINGS = {"batch_1": (1, None, 300), "batch_256": (256, None, 20), "batch_1_1thread": (1, 1, 300),
            "batch_256_1thread": (256, 1, 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--methods", nargs="+", default=["gnj", "turbo", "svd"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--stems", nargs="+", default=None,
                        help="committed results to compare, by file stem (replaces --methods)")
    parser.add_argument("--name", default="", help="suffix of the output files (required with --stems)")
    args = parser.parse_args()
    if args.stems and not args.name:
        raise SystemExit("--stems needs --name, so the comparison of the committed rows is not overwritten")
    labels = args.stems or args.methods
    stems = args.stems or [f"{args.model}_mnist_{m}" for m in args.methods]
    records = {label: json.loads((RESULTS / f"{stem}.json").read_text()) for label, stem in zip(labels, stems)}
    models = {m: bayescomp.load(RESULTS / r["compressed_file"]) for m, r in records.items()}
    shape = DATASETS["mnist"].input_shape
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in SETTINGS} for m in models}
    for round_index in range(args.rounds):
        order = labels[round_index % len(labels):] + labels[:round_index % len(labels)]
        for method in order:
            for key, (batch, threads, repeats) in SETTINGS.items():
                stats = measure_latency(models[method], shape, batch, repeats=repeats, warmup=10, num_threads=threads)
                samples[method][key].append(stats["median_ms"])
    summary = {m: {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
                   for k, v in per.items()} for m, per in samples.items()}
    result = {
        "model": args.model, "data": "mnist", "methods": labels, "rounds": args.rounds,
        "test_error_pct": {m: r["test_error_pct"] for m, r in records.items()},
        "kept_architecture": {m: r["kept_architecture"] for m, r in records.items()},
        "latency": summary, "samples_ms": samples, "threads": torch.get_num_threads(), "device": "cpu",
        "dtype": "float32", "command": this_command(), "git_commit": git_commit(),
    }
    stem = f"latency_compare_{args.model}_mnist" + (f"_{args.name}" if args.name else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [f"{args.model}/MNIST, CPU float32, {result['threads']} threads unless marked, median over {args.rounds} "
             "interleaved rounds (range in brackets), ms:", "",
             "| method | test error | kept architecture | " + " | ".join(SETTINGS) + " |",
             "|---|---|---|" + "---|" * len(SETTINGS)]
    for m in labels:
        cells = [f"{summary[m][k]['median_ms']:.3f} [{summary[m][k]['min_ms']:.3f}-{summary[m][k]['max_ms']:.3f}]"
                 for k in SETTINGS]
        lines.append(f"| {m} | {records[m]['test_error_pct']:.2f} % | {records[m]['kept_architecture']} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"`{result['command']}`"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
