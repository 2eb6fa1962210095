"""Generated networks against the unconditional BC-GNJ model at *equal validation error*, context by context
(issue 20, item 5).

``benchmarks/hyper_contexts.py`` compares the hypernetwork's networks with the unconditional model at the one
pruning its automatic search picked, so the two sit at different errors. Here the unconditional posterior (a
``bayescomp run`` directory: ``bayes.ckpt`` and ``run.json``, by default the 30-epoch model trained for the
equal-epoch comparison) is cut along a grid of shared log-alpha thresholds, each cut is restricted to the
context's classes, and the rule, fixed before the run, is: **per context, the smallest unconditional cut whose
validation error on the context is at most the generated network's** is its equal-error partner (the cuts are
scanned from the most pruned up and the first that qualifies is taken: the kept weights only grow along the
thresholds). The generated
network wins the context if it has no more weights than that partner. Only validation decides; test errors of both
are reported beside.

    python -m benchmarks.hyper_equal_error --data mnist

Writes ``benchmarks/results/hyper_equal_error_lenet5_<data>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from bayescomp.compress import CompressConfig, compress
from bayescomp.compress.precision import compression_with_bits
from bayescomp.compress.structure import prunable_modules
from bayescomp.hyper import context_error, generate, load_hypernetwork, random_contexts
from bayescomp.hyper.pipeline import HyperRunConfig, _cut_teacher, _run_config, load_run_data
from bayescomp.pipeline import dense_model
from benchmarks._common import RESULTS, this_command
from benchmarks.device_stage import sha256_of
from benchmarks.hyper_contexts import weights_of
from benchmarks.torch_pruning_compare import posterior_from_run

#: shared log-alpha thresholds the unconditional posterior is cut at, in steps of 0.1 (a group is kept while its
#: log alpha is below the threshold, so the kept weights grow with it; LeNet runs prune at about -3 to 0)
THRESHOLDS = [round(-5.0 + 0.1 * i, 1) for i in range(71)]


def unconditional_cuts(run_dir: Path, teacher: torch.nn.Module, data) -> list[tuple[float, torch.nn.Module, list]]:
    """The unconditional posterior (posterior mean) cut at every threshold of :data:`THRESHOLDS`, with each
    cut's per-layer precisions (BC's bits from the posterior variance)."""
    if not (run_dir / "bayes.ckpt").exists():
        raise SystemExit(f"no posterior in {run_dir} (bayes.ckpt); train it with benchmarks/hyper_contexts.py")
    model = posterior_from_run(teacher, run_dir)
    cuts = []
    for threshold in THRESHOLDS:
        try:
            result = compress(copy.deepcopy(model), data.val, CompressConfig(thresholds=threshold))
            cuts.append((threshold, result.model, result.precisions))
        except ValueError as error:  # a threshold that prunes a whole layer: no network there
            print(f"threshold {threshold}: {error}")
    return cuts


def bits_of(model: torch.nn.Module, precisions: list, weights_dense: int) -> float:
    """Compression with bits of a cut network (its layers at the precisions of the model it was cut from)."""
    return compression_with_bits([m.weight.numel() for m in prunable_modules(model)], precisions, weights_dense)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--hyper", type=Path, default=None,
                        help="hypernetwork file (default: benchmarks/results/hyper_lenet5_<data>/hyper.pt)")
    parser.add_argument("--unconditional-run", type=Path, default=None,
                        help="run directory of the unconditional posterior (default: "
                             "runs/hyper_baseline_lenet5_<data>_gnj)")
    parser.add_argument("--contexts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="suffix of the result files (another compressor or posterior)")
    args = parser.parse_args()
    started = time.perf_counter()
    hyper_path = args.hyper or RESULTS / f"hyper_lenet5_{args.data}" / "hyper.pt"
    run_dir = args.unconditional_run or Path(f"runs/hyper_baseline_lenet5_{args.data}_gnj")
    config = HyperRunConfig(model="lenet5", data=args.data, seed=args.seed)
    data = load_run_data(config)
    teacher = dense_model(_run_config(config), data, log=lambda *_: None, progress=False)
    hyper = load_hypernetwork(hyper_path)
    hyper.eval()
    cuts = unconditional_cuts(run_dir, teacher, data)
    rows = []
    for context in random_contexts(args.contexts, data.num_classes, [2, 3, 4, 5], seed=2026 + args.seed):
        produced = generate(hyper, context)
        generated = produced.model
        row = {"classes": list(context.classes), "generated_weights": weights_of(generated),
               "generated_compression_bits": produced.compression_bits,
               "generated_val_error_pct": context_error(generated, data.val, context.classes),
               "generated_test_error_pct": context_error(generated, data.test, context.classes)}
        curve, partner = [], None
        for threshold, cut, precisions in cuts:  # most pruned first: the first cut as accurate as the generated
            model = _cut_teacher(cut, context.classes)  # one is the smallest
            curve.append({"threshold": threshold, "weights": weights_of(model),
                          "compression_bits": bits_of(model, precisions, hyper.dense_weights()),
                          "val_error_pct": context_error(model, data.val, context.classes)})
            if curve[-1]["val_error_pct"] <= row["generated_val_error_pct"]:
                partner = curve[-1]
                break
        if partner is not None:
            row.update(unconditional_threshold=partner["threshold"], unconditional_weights=partner["weights"],
                       unconditional_compression_bits=partner["compression_bits"],
                       generated_no_larger_with_bits=row["generated_compression_bits"] >= partner["compression_bits"],
                       unconditional_val_error_pct=partner["val_error_pct"],
                       unconditional_test_error_pct=context_error(model, data.test, context.classes),
                       generated_no_larger=row["generated_weights"] <= partner["weights"])
        else:  # no cut of the unconditional model is as accurate on validation: the generated network wins
            row.update(unconditional_threshold=None, generated_no_larger=True, generated_no_larger_with_bits=True)
        row["unconditional_curve"] = curve
        rows.append(row)
        print(f"{row['classes']}: generated {row['generated_weights']:,} ({row['generated_val_error_pct']:.2f} % val)"
              f", unconditional {row.get('unconditional_weights', '-')} "
              f"({row.get('unconditional_val_error_pct', float('nan')):.2f} % val)", flush=True)
    paired = [r for r in rows if r["unconditional_threshold"] is not None]
    summary = {
        "contexts": len(rows), "contexts_generated_no_larger": sum(r["generated_no_larger"] for r in rows),
        "contexts_generated_no_larger_with_bits": sum(r["generated_no_larger_with_bits"] for r in rows),
        "median_generated_compression_bits": statistics.median(r["generated_compression_bits"] for r in rows),
        "contexts_without_partner": len(rows) - len(paired),
        "median_generated_weights": statistics.median(r["generated_weights"] for r in rows),
        "median_generated_test_error_pct": statistics.median(r["generated_test_error_pct"] for r in rows),
        "median_generated_val_error_pct": statistics.median(r["generated_val_error_pct"] for r in rows),
        **({"median_unconditional_weights": statistics.median(r["unconditional_weights"] for r in paired),
            "median_unconditional_test_error_pct": statistics.median(r["unconditional_test_error_pct"] for r in paired),
            "median_unconditional_val_error_pct": statistics.median(r["unconditional_val_error_pct"] for r in paired),
            "median_unconditional_compression_bits": statistics.median(
                r["unconditional_compression_bits"] for r in paired),
            "median_size_ratio_unconditional_over_generated": statistics.median(
                r["unconditional_weights"] / r["generated_weights"] for r in paired)} if paired else {})}
    record = {"data": args.data, "model": "lenet5", "hypernetwork_file": str(hyper_path),
              "hypernetwork_sha256": sha256_of(hyper_path),
              "unconditional_run": str(run_dir),
              "unconditional_epochs": json.loads((run_dir / "run.json").read_text())["bayes"]["epochs"],
              "thresholds": THRESHOLDS, "summary": summary, "rows": rows, "command": this_command(),
              "torch_threads": torch.get_num_threads(), "wall_time_s": time.perf_counter() - started}
    stem = f"hyper_equal_error_lenet5_{args.data}" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(json.dumps(summary, indent=2))


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [f"# Generated networks against the unconditional BC-GNJ model at equal validation error "
             f"(LeNet-5, {record['data']})", "",
             f"Unconditional posterior: `{record['unconditional_run']}` ({record['unconditional_epochs']} Bayesian "
             f"epochs, the hypernetwork's own), cut at shared log-alpha thresholds from {record['thresholds'][0]} to {record['thresholds'][-1]} in steps of 0.1. Rule, fixed "
             "before the run: per context, the smallest cut whose validation error on the context is at most the "
             "generated network's; the generated network wins if it has no more weights.", "",
             f"**The generated network is no larger in {s['contexts_generated_no_larger']} of {s['contexts']} "
             f"contexts** ({s['contexts_without_partner']} without an equally accurate cut)"
             + (f"; counted with bits (each at its own bit widths), in {s['contexts_generated_no_larger_with_bits']}."
                if "contexts_generated_no_larger_with_bits" in s else ".")]
    if "median_unconditional_weights" in s:
        lines += ["", "| median over contexts | generated | unconditional, equal validation error |", "|---|---|---|",
                  f"| weights | {s['median_generated_weights']:,.0f} | {s['median_unconditional_weights']:,.0f} |",
                  f"| validation error | {s['median_generated_val_error_pct']:.2f} % | "
                  f"{s['median_unconditional_val_error_pct']:.2f} % |",
                  f"| test error | {s['median_generated_test_error_pct']:.2f} % | "
                  f"{s['median_unconditional_test_error_pct']:.2f} % |"]
        if "median_generated_compression_bits" in s:
            lines.append(f"| compression with bits | {s['median_generated_compression_bits']:.1f}x | "
                         f"{s['median_unconditional_compression_bits']:.1f}x |")
        lines += ["", f"Median size ratio (unconditional / generated): "
                      f"{s['median_size_ratio_unconditional_over_generated']:.2f}."]
    lines += ["", f"Command: `{record['command']}` ({record['torch_threads']} thread(s), "
                  f"{record['wall_time_s']:.0f} s)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
