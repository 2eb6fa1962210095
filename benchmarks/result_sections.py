"""RESULTS.md sections for the experiments beside Table 1: self-compression, hypernetwork, CIFAR-10, ONNX, DDP.

Each reads its committed records from benchmarks/results/ and returns markdown lines (empty if it never ran).
"""

from __future__ import annotations

import json
import re
import statistics

from benchmarks._common import RESULTS, budget_label


def self_compression_section() -> list[str]:
    """The one-conv-layer self-compression experiment (benchmarks/self_compression_cnn1.py), if it has run."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("cnn1-*_self.json"))]
    if not results:
        return []
    results.sort(key=lambda r: (r["data"], r["kernels_total"]))
    lines = ["## Self-compression: one conv layer, Bayesian (density propagation) against plain", "",
             "From `python -m benchmarks.self_compression_cnn1` (diagonal covariance; kernels deleted smallest "
             "posterior-mean norm first while the validation error stays within the tolerance, then retrained; the "
             "plain CNN is cut to the same kernel count by its own norms and retrained as long):", "",
             "| data | N | Bayesian accuracy | kernels kept | Bayesian after | plain accuracy | plain with the same "
             "kernels | retrain epochs |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['data']} | {r['kernels_total']} | {100 - r['test_error_pct_before']:.2f} % | {r['kernels_kept']} | "
            f"{100 - r['test_error_pct']:.2f} % | {100 - r['plain_test_error_pct_before']:.2f} % | "
            f"{100 - r['plain_test_error_pct_same_kernels']:.2f} % | {r['retrain_epochs_total']} |")
    lines.append("")
    for data in sorted({r["data"] for r in results}):
        for kind in ("accuracy", "norms"):
            png = RESULTS / "plots" / f"cnn1_{data}_self_{kind}.png"
            if png.exists():
                lines.append(f"![{png.stem}](benchmarks/results/plots/{png.name})")
    return lines + [""]


def hyper_section() -> list[str]:
    """Conditional compression with the Bayesian hypernetwork (benchmarks/hyper_contexts.py), if it has run."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*_hyper*.json"))]
    if not results:
        return []
    lines = ["## Conditional compression: one hypernetwork, a network per context", "",
             "From `python -m benchmarks.hyper_contexts --data <data>`: random contexts of 2-5 classes at budget 1; "
             "errors are on the test images of the context's classes; medians over contexts. Retrained BC-GNJ: the "
             "teacher cut to the context, trained with BC-GNJ on the context's data and compressed with the automatic "
             "search; magnitude: the cut teacher pruned to the generated network's weight count and fine-tuned; "
             "unconditional BC-GNJ: one BC-GNJ model for all ten classes with its output cut to the context; epochs: "
             "the hypernetwork's training epochs / the unconditional model's (Bayesian + fine-tuning; equal budgets "
             "are the fair comparison, the 90 + 10 Table 1 model is the stronger one).", "",
             "| data | hypernetwork options | contexts | generated error | weights | MACs / dense | generate ms (median / max) | "
             "retrained GNJ error | weights | retrain s | generate / retrain time | within 0.5 pt and no larger | "
             "magnitude error (same size) | unconditional BC error | weights | epochs | teacher error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        retrain = (f"{s['median_retrain_test_error_pct']:.2f} % | {s['median_retrain_weights_kept']:,.0f} | "
                   f"{s['median_retrain_s']:.0f} | {s['median_generate_vs_retrain_ratio']:.1e} | "
                   f"{s['contexts_both']} of {s['retrained_contexts']} (error {s['contexts_within_0_5_of_retrain']}, "
                   f"size {s['contexts_no_larger_than_retrain']}) | {s['median_magnitude_test_error_pct']:.2f} %"
                   if s.get("retrained_contexts") else "– | – | – | – | – | –")
        lines.append(
            f"| {r['data']} | {hyper_options_text(r)} | {s['contexts']} | "
            f"{s['median_test_error_pct']:.2f} % | {s['median_weights_kept']:,.0f} | "
            f"{100 * s['median_flops_fraction']:.1f} % | {s['median_generate_ms']:.1f} / {s['max_generate_ms']:.1f} | "
            f"{retrain} | {s['median_unconditional_test_error_pct']:.2f} % | "
            f"{s['median_unconditional_weights_kept']:,.0f} | {_hyper_epochs(r)} | "
            f"{s['median_teacher_test_error_pct']:.2f} % |")
    lines += ["", "Budgets (median over the budget contexts; the budget caps multiply-accumulates as a fraction of the "
              "dense network's):", "", "| data | hypernetwork options | budget | MACs / dense | weights | error | monotone in "
              "every context |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for budget in sorted({b["budget"] for b in r["budgets"]}, reverse=True):
            rows = [b for b in r["budgets"] if b["budget"] == budget]
            lines.append(f"| {r['data']} | {hyper_options_text(r)} | {budget:g} | {100 * statistics.median(b['flops_fraction'] for b in rows):.2f} % | "
                         f"{statistics.median(b['weights_kept'] for b in rows):,.0f} | "
                         f"{statistics.median(b['test_error_pct'] for b in rows):.2f} % | "
                         f"{'yes' if r['summary']['budget_monotone'] else 'no'} |")
    lines.append("")
    for r in results:
        for kind in ("classes", "budget"):
            png = RESULTS / "plots" / f"{r.get('stem', 'lenet5_' + r['data'] + '_hyper')}_{kind}.png"
            if png.exists():
                lines.append(f"![{png.stem}](benchmarks/results/plots/{png.name})")
    return lines + [""]


def hyper_options_text(record: dict) -> str:
    """The options a hypernetwork was trained with, and its seed where not 0 (data split, contexts, noise)."""
    options = list(record.get("hyper_options") or ["defaults"])
    return ", ".join(options + ([f"seed {record['seed']}"] if record.get("seed") else []))


def _hyper_epochs(record: dict) -> str:
    """'hypernetwork / unconditional' training epochs; records from before the equal-budget rerun name files only."""
    hyper = record.get("hypernetwork_epochs", record["hypernetwork"]["config"]["train"]["epochs"])
    unconditional = record.get("unconditional_epochs")
    if unconditional is None:  # older records: the file says which model it was
        unconditional = "90 + 10" if record["unconditional_file"].endswith(f"lenet5_{record['data']}_gnj.bcz") else 30
    return f"{hyper} / {unconditional}"


def cifar_section(runs: list[dict]) -> list[str]:
    """CIFAR-10 runs (benchmarks/cifar_runs.py): networks with residual connections go through the graph path."""
    cifar = [r for r in runs if r["data"] == "cifar10"]
    if not cifar:
        return []
    lines = ["## CIFAR-10: ResNet-20 (dependency-graph path) and VGG-16", "",
             "From `python -m benchmarks.cifar_runs` (command per row below). Errors on the 10,000 test images; "
             "× architecture = all weights / weights kept; × bits adds the per-layer bit widths; ONNX = max |logit "
             "difference| of the compressed model exported to ONNX and run by onnxruntime, on 64 test images.", "",
             "| model | method | search | hardware | start | Bayesian + fine-tuning epochs | dense error | "
             "compressed error | × architecture | × bits | × file | FLOPs dense → compressed (× fewer) | "
             "latency b1 / b256 (ms, dense → compressed) | ONNX max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cifar:
        lat = r.get("latency_ms") or {}
        start = "pretrained (shipped)" if r.get("pretrained") else f"{r.get('dense_epochs')} dense epochs"
        latency = "–"
        if lat.get("dense") and lat.get("compressed"):
            latency = (f"{lat['dense'].get('batch_1', float('nan')):.1f} → {lat['compressed'].get('batch_1', float('nan')):.1f}"
                       f" / {lat['dense'].get('batch_256', float('nan')):.0f} → "
                       f"{lat['compressed'].get('batch_256', float('nan')):.0f}")
        compress = r["config"]["compress"]
        search = (budget_label(compress)
                  or f"{compress.get('search', 'auto')}, {compress.get('tolerance_pct', 0):g} pt")
        lines.append(
            f"| {r['model']} | {r['method']} | {search} | {r.get('hardware', '–')} | "
            f"{start} | {r.get('epochs')} + {r.get('finetune_epochs') or 0}{_distilled(r)} | "
            f"{r['dense_test_error_pct']:.2f} % | {r['test_error_pct']:.2f} % | {r['compression_architecture']:.1f} | "
            f"{r['compression_bits']:.1f} | {r['compression_file']:.1f} | {r['flops_dense']:,} → "
            f"{r['flops_compressed']:,} ({r['flops_dense'] / r['flops_compressed']:.2f}) | {latency} | "
            f"{r.get('onnx_max_abs_diff', float('nan')):.1e} |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in cifar), ""]
    if not any(r["model"] == "vgg16" for r in cifar):
        lines += ["VGG-16/CIFAR-10 (paper: BC-GNJ 8.6 % at 14x, BC-GHS 9.0 % at 18x) has not been run: no GPU was "
                  "available to the sessions that built this; `python -m benchmarks.cifar_runs --model vgg16 --method "
                  "gnj --device cuda` (and `--method ghs`) runs it.", ""]
    return lines


def onnx_section() -> list[str]:
    """ONNX export of every zoo model (benchmarks/onnx_export.py)."""
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("onnx_*.json"))]
    if not records:
        return []
    lines = ["## ONNX export: every zoo model, equality with PyTorch and onnxruntime latency", "",
             "From `python -m benchmarks.onnx_export`: each zoo model (dense, fresh weights, batch-norm statistics from 256 training images) and each committed "
             "compressed model exported with torch.onnx (dynamo), run by onnxruntime (CPU provider) on 64 test images "
             "at two batch sizes. Max abs diff = largest |ONNX − PyTorch| logit difference; in brackets, the distance "
             "of PyTorch float32 and of onnxruntime from the same network run in float64. Latency: median ms, 1 "
             "thread.", "",
             "| model | data | ONNX of | max abs diff (PyTorch vs f64, ORT vs f64) | ms batch 1 | ms batch 64 | "
             "speed-up b1 / b64 |", "|---|---|---|---|---|---|---|"]
    for r in records:
        check = r["float64_check"]
        dense = r["ort_latency_ms_dense"]
        lines.append(f"| {r['model']} | {r['data']} | dense | {r['onnx_max_abs_diff']:.1e} "
                     f"({check['torch_float32_vs_float64']:.1e}, {check['onnxruntime_vs_float64']:.1e}) | "
                     f"{dense['batch1_threads1']:.3f} | {dense['batch64_threads1']:.2f} | – |")
        for c in r["compressed"]:
            check, lat = c["float64_check"], c["ort_latency_ms"]
            lines.append(f"| {r['model']} | {r['data']} | {c['file']} | {c['onnx_max_abs_diff']:.1e} "
                         f"({check['torch_float32_vs_float64']:.1e}, {check['onnxruntime_vs_float64']:.1e}) | "
                         f"{lat['batch1_threads1']:.3f} | {lat['batch64_threads1']:.2f} | "
                         f"{c['speedup']['batch1_threads1']:.1f}x / {c['speedup']['batch64_threads1']:.1f}x |")
    worst = max(r["onnx_max_abs_diff_all"] for r in records)
    over = [f"{r['model']}/{c['file']}" for r in records for c in r["compressed"] if c["onnx_max_abs_diff"] > 1e-5]
    over += [f"{r['model']} dense" for r in records if r["onnx_max_abs_diff"] > 1e-5]
    lines += ["", f"Largest difference over all exports: {worst:.1e}" + (
        f"; above 1e-5: {', '.join(over)} (there PyTorch's own float32 result is as far from float64 as "
        "onnxruntime's)." if over else " (every export within 1e-5)."), "",
        "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in records})), ""]
    return lines


def ddp_section() -> list[str]:
    """Data-parallel training (benchmarks/ddp.py)."""
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("ddp_*.json"))]
    lines = []
    for r in (r for r in records if "model" in r and "data" in r):  # runs of benchmarks/ddp.py, not other ddp_*
        md = RESULTS / f"ddp_{r['model']}_{r['data']}.md"
        if md.exists():
            lines += ["## Data-parallel training (DDP, gloo)", "", re.sub(r"^(#+) ", r"##\1 ", md.read_text(), flags=re.M), ""]
    return lines


#: Result files that a section above renders (or that belong to a per-run record); anything else is shown as is.
RENDERED = ("table1", "latency_compare_", "turbo_module_b_", "epoch_cost_", "onnx_", "cnn1-")


def other_sections(run_stems: set[str]) -> list[str]:
    """Every other stand-alone benchmark write-up (``results/<name>.md`` beside ``<name>.json``), embedded as it is
    with its headings moved down one level, so a new benchmark appears here without an edit to this file."""
    lines: list[str] = []
    for md in sorted(RESULTS.glob("*.md")):
        json_path = md.with_suffix(".json")
        if not json_path.exists() or md.stem in run_stems or md.name.startswith(RENDERED) or "_hyper" in md.stem:
            continue
        record = json.loads(json_path.read_text())
        if md.name.startswith("ddp_") and "model" in record:  # rendered by ddp_section
            continue
        text = re.sub(r"^(#+) ", r"#\1 ", md.read_text(), flags=re.M).rstrip("\n")
        if not text.startswith("## "):  # a write-up without a title gets its file name as one
            text = f"## {md.stem} (`benchmarks/results/{md.name}`)\n\n{text}"
        lines += [text, ""]
    return lines


def _distilled(r: dict) -> str:
    """`` (distilled, alpha 0.9, T 4)`` when the fine-tuning learned from the dense model as well as the labels."""
    distill = r.get("finetune_distill")
    return f" (distilled, alpha {distill['alpha']:g}, T {distill['temperature']:g})" if distill else ""
