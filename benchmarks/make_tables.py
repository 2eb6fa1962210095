"""Generate the README's results tables from benchmarks/results/*.json (never typed by hand).

    python benchmarks/make_tables.py          # rewrites the block between the markers in README.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table1 import PUBLISHED  # noqa: E402  (one list of published figures for both tables)


def _before(r: dict) -> str:
    value = r.get("test_error_pct_pruned_before_finetune")
    return f"{value:.2f} (fine-tuned {r.get('finetune_epochs')} ep.) → " if value is not None else ""


def variants_table(records: list[dict]) -> str:
    """Every post-training setting tried on the committed posteriors (results/variants/), for the trade-off."""
    lines = ["| model | clip_var | epochs | tolerance | fine-tune epochs | bits | kept architecture | compression | "
             "test error before fine-tuning | pruned | quantised |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c = r["config"]
        before = r.get("test_error_pct_pruned_before_finetune")
        lines.append(
            f"| {r['model']} | {c['prior']['clip_var']} | {r['epochs']} | {c['compress']['tolerance_pct']} | "
            f"{r.get('finetune_epochs', 0)} | {c['compress']['bits_reduce']} | {r['kept_architecture']} | "
            f"{r['compression_architecture']:.1f}x | {'–' if before is None else f'{before:.2f} %'} | "
            f"{r['test_error_pct_pruned']:.2f} % | {r['test_error_pct']:.2f} % |")
    return "\n".join(lines)


def compression_table(records: list[dict]) -> str:
    lines = [
        "| model | method | test error (dense → pruned, before fine-tuning → pruned → quantised) | kept architecture | weights kept | "
        "architecture compression | bits per layer | bit compression | file ratio | FLOPs | "
        "CPU latency b=1 / b=256 (dense → compressed) | epochs | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lat = r.get("latency_ms")
        latency = (f"{lat['dense']['batch_1']:.3f} → {lat['compressed']['batch_1']:.3f} ms "
                   f"({lat['speedup']['batch_1']:.1f}x) / {lat['dense']['batch_256']:.2f} → "
                   f"{lat['compressed']['batch_256']:.2f} ms ({lat['speedup']['batch_256']:.1f}x)") if lat else "–"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['dense_test_error_pct']:.2f} → {_before(r)}{r['test_error_pct_pruned']:.2f} → "
            f"{r['test_error_pct']:.2f} % | {r['architecture_dense']} → {r['kept_architecture']} | "
            f"{r['weights_kept']:,} / {r['weights_dense']:,} | **{r['compression_architecture']:.1f}x** | "
            f"{'-'.join(str(b) for b in r['bits_per_layer'])} | {r['compression_bits']:.0f}x | "
            f"{r['compression_file']:.0f}x | {r['flops_dense']:,} → {r['flops_compressed']:,} | {latency} | "
            f"{r['epochs']} | {PUBLISHED.get((r['model'], r['method']), '–')} |")
    return "\n".join(lines)


def cost_table(records: list[dict]) -> str:
    lines = ["| model | plain epoch (s) | BC-GNJ epoch (s) | ratio |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['plain_epoch_s_median']:.2f} | {r['bayes_epoch_s_median']:.2f} | "
                     f"{r['ratio']:.2f}x |")
    return "\n".join(lines)


def _turbo_rows(by: dict, row) -> None:
    """Issue 5 (Turbo-VBI): error, compression against BC-GNJ's, regularity against BC-GNJ and Sparse VD, latency."""
    for model, limit in (("lenet5", 1.0), ("lenet300", 1.8)):
        turbo, gnj, svd = by.get((model, "turbo")), by.get((model, "gnj")), by.get((model, "svd"))
        if not turbo or not gnj or "dense_block_share" not in turbo:
            continue
        row(f"{model} Turbo-VBI: error <= {limit} % with non-zero compression >= BC-GNJ's",
            f"{turbo['test_error_pct']:.2f} % at {turbo['compression_nonzero']:.1f}x non-zero "
            f"(BC-GNJ {gnj['compression_architecture']:.1f}x, all dense)",
            turbo["test_error_pct"] <= limit and turbo["compression_nonzero"] >= gnj["compression_architecture"])
        for name, other in (("BC-GNJ", gnj), ("Sparse VD", svd)):
            if other and "dense_block_share" in other:
                row(f"{model} Turbo-VBI more regular than {name} (dense-block share up, tiles per non-zero down)",
                    f"{100 * turbo['dense_block_share']:.1f} % vs {100 * other['dense_block_share']:.1f} %; "
                    f"{turbo['blocks_per_nonzero']:.3f} vs {other['blocks_per_nonzero']:.3f}",
                    turbo["dense_block_share"] > other["dense_block_share"]
                    and turbo["blocks_per_nonzero"] < other["blocks_per_nonzero"])
        compare = RESULTS / f"latency_compare_{model}_mnist.json"
        if compare.exists() and {"turbo", "gnj"} <= set(json.loads(compare.read_text())["methods"]):
            c = json.loads(compare.read_text())["latency"]
            t1, g1 = c["turbo"]["batch_1"]["median_ms"], c["gnj"]["batch_1"]["median_ms"]
            t256, g256 = c["turbo"]["batch_256"]["median_ms"], c["gnj"]["batch_256"]["median_ms"]
            row(f"{model} Turbo-VBI faster on CPU than BC-GNJ's compressed model (errors "
                f"{turbo['test_error_pct']:.2f} % vs {gnj['test_error_pct']:.2f} %; interleaved rounds)",
                f"batch 1: {t1:.3f} vs {g1:.3f} ms; batch 256: {t256:.2f} vs {g256:.2f} ms", t1 < g1 and t256 < g256)
            continue
        lat_t, lat_g = turbo.get("latency_ms"), gnj.get("latency_ms")
        if lat_t and lat_g:
            row(f"{model} Turbo-VBI faster on CPU than BC-GNJ's compressed model (errors "
                f"{turbo['test_error_pct']:.2f} % vs {gnj['test_error_pct']:.2f} %)",
                f"batch 1: {lat_t['compressed']['batch_1']:.3f} vs {lat_g['compressed']['batch_1']:.3f} ms; batch 256: "
                f"{lat_t['compressed']['batch_256']:.2f} vs {lat_g['compressed']['batch_256']:.2f} ms",
                lat_t["compressed"]["batch_1"] < lat_g["compressed"]["batch_1"]
                and lat_t["compressed"]["batch_256"] < lat_g["compressed"]["batch_256"])
    cost = RESULTS / "turbo_module_b_lenet5_mnist.json"
    if cost.exists():
        c = json.loads(cost.read_text())
        row("one module-B sweep over all LeNet-5 layers < 10 % of a training epoch",
            f"{1e3 * c['module_b_sweep_s']:.2f} ms vs {c['epoch_s']:.1f} s ({100 * c['sweep_fraction_of_epoch']:.3f} %); "
            f"all Turbo iterations of an epoch {100 * c['turbo_fraction_of_epoch']:.2f} %",
            c["sweep_fraction_of_epoch"] < 0.1)


def acceptance_table(runs: list[dict], costs: list[dict]) -> str:
    """The foundation issue's targets against the committed figures (pass/fail computed, not typed)."""
    by = {(r["model"], r["method"]): r for r in runs}
    rows = []

    def row(target: str, measured: str, ok: bool | None) -> None:
        rows.append(f"| {target} | {measured} | {'yes' if ok else 'no' if ok is not None else '–'} |")

    r = by.get(("lenet300", "gnj"))
    if r:
        row("LeNet-300-100 BC-GNJ: error <= 1.8 % at >= 9x",
            f"{r['test_error_pct']:.2f} % (quantised; pruned {r['test_error_pct_pruned']:.2f} %) at "
            f"{r['compression_architecture']:.1f}x", r["test_error_pct"] <= 1.8 and r["compression_architecture"] >= 9)
    r = by.get(("lenet5", "gnj"))
    if r:
        row("LeNet-5-Caffe BC-GNJ: error <= 1.0 % at >= 100x",
            f"{r['test_error_pct']:.2f} % (quantised; pruned {r['test_error_pct_pruned']:.2f} %) at "
            f"{r['compression_architecture']:.1f}x; bits {r['compression_bits']:.0f}x, file {r['compression_file']:.0f}x",
            r["test_error_pct"] <= 1.0 and r["compression_architecture"] >= 100)
        lat = r.get("latency_ms")
        if lat:
            one = lat["speedup"].get("batch_1_1thread")
            row("compressed LeNet-5 >= 3x faster on CPU at batch 1 and 256",
                f"batch 1: {lat['speedup']['batch_1']:.1f}x, batch 256: {lat['speedup']['batch_256']:.1f}x "
                f"({lat['threads']} threads)" + (f"; batch 1 on 1 thread: {one:.1f}x" if one else ""),
                min(lat["speedup"]["batch_1"], lat["speedup"]["batch_256"]) >= 3)
    r = by.get(("lenet5", "ghs"))
    if r:
        row("LeNet-5-Caffe BC-GHS: error <= 1.0 % at >= 150x (architecture) and >= 400x (bits)",
            f"{r['test_error_pct']:.2f} % at {r['compression_architecture']:.1f}x, bits {r['compression_bits']:.0f}x",
            r["test_error_pct"] <= 1.0 and r["compression_architecture"] >= 150 and r["compression_bits"] >= 400)
    r = by.get(("lenet300", "ghs"))
    if r:
        row("LeNet-300-100 BC-GHS: error <= 1.8 % at >= 9x", f"{r['test_error_pct']:.2f} % at "
            f"{r['compression_architecture']:.1f}x", r["test_error_pct"] <= 1.8 and r["compression_architecture"] >= 9)
    r = by.get(("lenet5", "svd"))
    if r and "compression_nonzero" in r:
        row("LeNet-5-Caffe Sparse VD: error <= 1.0 % with >= 100x fewer non-zero weights",
            f"{r['test_error_pct']:.2f} % at {r['compression_nonzero']:.1f}x (CSR float32 {r['compression_csr']:.1f}x)",
            r["test_error_pct"] <= 1.0 and r["compression_nonzero"] >= 100)
    _turbo_rows(by, row)
    table1 = RESULTS / "table1.json"
    if table1.exists():
        for c in json.loads(table1.read_text())["equal_error"]:
            best = c["magnitude_best"]
            row(f"{c['model']} {c['method']} beats magnitude pruning at equal test error (float32 storage)",
                f"{c['compression_storage_f32']:.1f}x vs " + (f"{best['compression_storage_f32']:.1f}x" if best else
                                                              "no magnitude point at that error"),
                c["beats_magnitude"])
    for c in costs:
        row(f"Bayesian epoch of {c['model']} <= 2.5x a plain epoch", f"{c['ratio']:.2f}x", c["ratio"] <= 2.5)
    return "\n".join(["| target | measured | met |", "|---|---|---|", *rows])


def self_compression_section() -> list[str]:
    """The one-conv-layer self-compression experiment (benchmarks/self_compression_cnn1.py), if it has run."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("cnn1-*_self.json"))]
    if not results:
        return []
    results.sort(key=lambda r: (r["data"], r["kernels_total"]))
    lines = ["### Self-compression: one conv layer, Bayesian (density propagation) against plain", "",
             "From `python benchmarks/self_compression_cnn1.py` (diagonal covariance; kernels deleted smallest "
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
    lines = ["### Conditional compression: one hypernetwork, a network per context", "",
             "From `python benchmarks/hyper_contexts.py --data <data>`: random contexts of 2-5 classes at budget 1; "
             "errors are on the test images of the context's classes; medians over contexts. Retrained BC-GNJ: the "
             "teacher cut to the context, trained with BC-GNJ on the context's data and compressed with the automatic "
             "search; magnitude: the cut teacher pruned to the generated network's weight count and fine-tuned; "
             "unconditional BC-GNJ: the Table 1 model (or one trained the same way) with its output cut to the "
             "context.", "",
             "| data | hypernetwork options | contexts | generated error | weights | MACs / dense | generate ms (median / max) | "
             "retrained GNJ error | weights | retrain s | generate / retrain time | within 0.5 pt and no larger | "
             "magnitude error (same size) | unconditional BC error | weights | teacher error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        retrain = (f"{s['median_retrain_test_error_pct']:.2f} % | {s['median_retrain_weights_kept']:,.0f} | "
                   f"{s['median_retrain_s']:.0f} | {s['median_generate_vs_retrain_ratio']:.1e} | "
                   f"{s['contexts_both']} of {s['retrained_contexts']} (error {s['contexts_within_0_5_of_retrain']}, "
                   f"size {s['contexts_no_larger_than_retrain']}) | {s['median_magnitude_test_error_pct']:.2f} %"
                   if s.get("retrained_contexts") else "– | – | – | – | – | –")
        lines.append(
            f"| {r['data']} | {', '.join(r.get('hyper_options') or ['defaults'])} | {s['contexts']} | "
            f"{s['median_test_error_pct']:.2f} % | {s['median_weights_kept']:,.0f} | "
            f"{100 * s['median_flops_fraction']:.1f} % | {s['median_generate_ms']:.1f} / {s['max_generate_ms']:.1f} | "
            f"{retrain} | {s['median_unconditional_test_error_pct']:.2f} % | "
            f"{s['median_unconditional_weights_kept']:,.0f} | {s['median_teacher_test_error_pct']:.2f} % |")
    lines += ["", "Budgets (median over the budget contexts; the budget caps multiply-accumulates as a fraction of the "
              "dense network's):", "", "| data | hypernetwork options | budget | MACs / dense | weights | error | monotone in "
              "every context |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for budget in sorted({b["budget"] for b in r["budgets"]}, reverse=True):
            rows = [b for b in r["budgets"] if b["budget"] == budget]
            lines.append(f"| {r['data']} | {', '.join(r.get('hyper_options') or ['defaults'])} | {budget:g} | {100 * statistics.median(b['flops_fraction'] for b in rows):.2f} % | "
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


def cifar_section(runs: list[dict]) -> list[str]:
    """CIFAR-10 runs (benchmarks/cifar_runs.py): networks with residual connections go through the graph path."""
    cifar = [r for r in runs if r["data"] == "cifar10"]
    if not cifar:
        return []
    lines = ["### CIFAR-10: ResNet-20 (dependency-graph path) and VGG-16", "",
             "From `python benchmarks/cifar_runs.py` (command per row below). Errors on the 10,000 test images; "
             "× architecture = all weights / weights kept; × bits adds the per-layer bit widths; ONNX = max |logit "
             "difference| of the compressed model exported to ONNX and run by onnxruntime, on 64 test images.", "",
             "| model | method | search | hardware | dense epochs | Bayesian epochs | dense error | compressed error | "
             "× architecture | × bits | × file | FLOPs dense → compressed | latency b1 / b256 (ms, dense → compressed) "
             "| ONNX max abs diff |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cifar:
        lat = r.get("latency_ms") or {}
        latency = "–"
        if lat.get("dense") and lat.get("compressed"):
            latency = (f"{lat['dense'].get('batch_1', float('nan')):.1f} → {lat['compressed'].get('batch_1', float('nan')):.1f}"
                       f" / {lat['dense'].get('batch_256', float('nan')):.0f} → "
                       f"{lat['compressed'].get('batch_256', float('nan')):.0f}")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['config']['compress'].get('search', 'auto')} | {r.get('hardware', '–')} | {r.get('dense_epochs')} | {r.get('epochs')} | "
            f"{r['dense_test_error_pct']:.2f} % | {r['test_error_pct']:.2f} % | {r['compression_architecture']:.1f} | "
            f"{r['compression_bits']:.1f} | {r['compression_file']:.1f} | {r['flops_dense']:,} → "
            f"{r['flops_compressed']:,} | {latency} | {r.get('onnx_max_abs_diff', float('nan')):.1e} |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in cifar), ""]
    if not any(r["model"] == "vgg16" for r in cifar):
        lines += ["VGG-16/CIFAR-10 (paper: BC-GNJ 8.6 % at 14x, BC-GHS 9.0 % at 18x) has not been run: no GPU was "
                  "available to the sessions that built this; `python benchmarks/cifar_runs.py --model vgg16 --method "
                  "gnj --device cuda` (and `--method ghs`) runs it.", ""]
    return lines


def onnx_section() -> list[str]:
    """ONNX export of every zoo model (benchmarks/onnx_export.py)."""
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("onnx_*.json"))]
    if not records:
        return []
    lines = ["### ONNX export: every zoo model, equality with PyTorch and onnxruntime latency", "",
             "From `python benchmarks/onnx_export.py`: each zoo model (dense, fresh weights, batch-norm statistics from 256 training images) and each committed "
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
    for r in records:
        md = RESULTS / f"ddp_{r['model']}_{r['data']}.md"
        if md.exists():
            lines += ["### Data-parallel training (DDP, gloo)", "", md.read_text(), ""]
    return lines


def build() -> str:
    runs, costs = [], []
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        if path.name.startswith(("table1", "turbo_module_b", "turbo_exploration", "latency_compare", "cnn1-", "onnx_",
                                 "ddp_")) \
                or "_hyper" in path.name:
            continue
        (costs if path.name.startswith("epoch_cost_") else runs).append(record)
    order = {"lenet300": 0, "lenet5": 1, "vgg16": 2, "resnet20": 3, "resnet56": 4}
    runs.sort(key=lambda r: (order.get(r["model"], 9), r["method"]))
    parts = [START, "", "Generated by `python benchmarks/make_tables.py` from `benchmarks/results/*.json`.", ""]
    if runs or costs:
        parts += ["Acceptance targets (foundation issue, the Table 1 issue and the Turbo-VBI issue):", "", acceptance_table(runs, costs), ""]
    if (RESULTS / "table1.md").exists():
        parts += ["### Table 1: every method on MNIST, measured the same way", "",
                  "From `benchmarks/results/table1.md` (`python benchmarks/table1.py`). Non-zero weights, CSR and "
                  "file figures are counted in the committed compressed files; × non-zero = all weights / non-zero "
                  "weights; × architecture = all weights / weights of the pruned dense layers; × CSR = 32 x all "
                  "weights / bits of values + column indices + row pointers; × bits = 32 x all weights / (kept dense "
                  "weights x bits per layer); latency re-measured one model at a time.", "",
                  (RESULTS / "table1.md").read_text(), "",
                  "![error against compression](benchmarks/results/plots/table1_error_vs_compression.png)", ""]
    supports = [p for p in (RESULTS / "plots" / f"{m}_mnist_{meth}_support.png" for m in ("lenet300", "lenet5")
                            for meth in ("turbo", "svd")) if p.exists()]
    if supports:
        parts += ["Support patterns (kept weights in black on each layer's dense weight grid; rows = output neurons or "
                  "filters, columns = inputs x kernel positions):", ""]
        parts += [f"![{p.stem}](benchmarks/results/plots/{p.name})" for p in supports] + [""]
    for compare in sorted(RESULTS.glob("latency_compare_*.md")):
        parts += ["Head-to-head latency (`benchmarks/latency_compare.py`):", "", compare.read_text(), ""]
    turbo_cost = RESULTS / "turbo_module_b_lenet5_mnist.md"
    if turbo_cost.exists():
        parts += ["Turbo-VBI module B against a training epoch (`python benchmarks/turbo_module_b.py`):", "",
                  turbo_cost.read_text(), ""]
    parts += self_compression_section()
    parts += hyper_section()
    parts += cifar_section(runs)
    parts += onnx_section()
    parts += ddp_section()
    if runs:
        parts += ["### Every run in detail", "", compression_table(runs), ""]
        parts += ["Commands: " + "; ".join(f"`{r['command']}`" for r in runs) + "", ""]
    if costs:
        parts += ["Training cost per epoch (CPU, 2 threads):", "", cost_table(costs), ""]
    variants = [json.loads(p.read_text()) for p in sorted((RESULTS / "variants").glob("*.json"))]
    if variants:
        parts += ["Other post-training settings tried on the same trained posteriors (`benchmarks/results/variants/`); "
                  "the tolerance was raised step by step after looking at these test figures, so the headline rows "
                  "are not a blind choice:", "", variants_table(variants), ""]
    parts.append(END)
    return "\n".join(parts)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"README.md has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + build() + tail)
    print("README.md results block updated")


if __name__ == "__main__":
    main()
