"""The report: accuracy, compression, bits, FLOPs and measured latency, as report.json and report.md.

Every ratio is defined where it is printed:

* compression_architecture = all weights of the dense network / weights of the pruned dense layers;
* compression_bits = 32 x all weights / sum over layers of (kept weights x bits per weight);
* compression_file = bytes of the dense float32 state_dict file / bytes of the packed compressed file;
* compression_nonzero = all weights / non-zero weights of the compressed model (the parameter ratio);
* compression_csr = 32 x all weights / bits of the compressed layers stored as CSR (float32 values + column
  indices + row pointers); compression_csr_bits the same with the values at each layer's bit width.
Weights are the entries of Linear/Conv2d weight tensors (biases excluded, as in the papers).

Regularity (the same for every method, so patterns compare; :mod:`bayescomp.compress.blocks`): each shipped
(quantised) compressed layer's weight as its GEMM matrix (Linear (out, in); Conv2d (out, in*kh*kw)) cut into 4x4 tiles:
dense_block_share = share of the non-zero weights that sit in tiles with no zero; nonzero_blocks = tiles holding
any non-zero; blocks_per_nonzero = nonzero_blocks / non-zero weights (lower is more regular); neurons_removed =
hidden neurons and filters removed (input features excluded).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bayescomp import measure
from bayescomp.compress import CompressionResult, prunable_modules
from bayescomp.calibration import calibration_report
from bayescomp.compress.blocks import choose_block_format, regularity_metrics
from bayescomp.compress.chain import build_chain
from bayescomp.compress.search import sweep_global_thresholds
from bayescomp.methods import METHODS, get_method
from bayescomp.priors.base import bayesian_layers, deterministic_mode
from bayescomp.report_schema import REQUIRED_KEYS, Report, check_report
from bayescomp.runtime import compare_runtimes, format_runtime_latency
from bayescomp.train import evaluate


def _arch(values: list[int]) -> str:
    return "-".join(str(v) for v in values)


def measure_latency_pair(dense, small, input_shape, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Median CPU latency (ms) of both models at batch 1 and 256 with torch's thread count, plus batch 1 on one
    thread (per-request serving usually pins one thread per request).

    The two models are timed in ``rounds`` interleaved rounds (dense, compressed, dense, ...), each a median over a
    share of the repeats, and the figure is the median over rounds: a burst of machine noise then hits both models
    instead of skewing their ratio (separate single measurements on a shared VM differed by up to 2x)."""
    settings = {"batch_1": (1, None, 300), "batch_256": (256, None, 30), "batch_1_1thread": (1, 1, 300)}
    samples: dict[str, dict[str, list[float]]] = {"dense": {}, "compressed": {}}
    for _ in range(rounds):
        for label, model in (("dense", dense), ("compressed", small)):
            for key, (batch, threads, repeats) in settings.items():
                stats = measure.measure_latency(model, input_shape, batch, repeats=max(3, repeats // rounds),
                                                warmup=10, num_threads=threads)
                samples[label].setdefault(key, []).append(stats["median_ms"])
    out: dict[str, Any] = {label: {k: statistics.median(v) for k, v in per.items()} for label, per in samples.items()}
    out["speedup"] = {k: out["dense"][k] / out["compressed"][k] for k in out["dense"]}
    out["threads"] = torch.get_num_threads()
    out["rounds"] = rounds
    return out


def regularity_fields(dense, compressed) -> dict[str, Any]:
    """The regularity metrics of the shipped (quantised) compressed model as flat report fields; neurons_removed
    compares output sizes with the dense model, layer by layer (the last layer's outputs, the classes, stay)."""
    small = prunable_modules(compressed)
    metrics = regularity_metrics([m.weight.detach() for m in small])
    removed = sum(d.weight.shape[0] - c.weight.shape[0] for d, c in zip(prunable_modules(dense)[:-1], small[:-1]))
    return {"dense_block_share": metrics["dense_block_share"], "nonzero_blocks": metrics["nonzero_blocks"],
            "blocks_per_nonzero": metrics["blocks_per_nonzero"], "mean_row_run": metrics["mean_row_run"],
            "neurons_removed": int(removed), "regularity": metrics}


def block_format_latency(dense, small, input_shape) -> dict[str, Any]:
    """Run the compressed model's Linear layers in the 4x4 block-sparse format where that is measured faster (at
    batch 256); when some layer switches, measure the latency of that model too. Conv2d layers stay dense."""
    if not isinstance(small, torch.nn.Sequential):  # the block format swaps Linear layers of a chain only
        return {"decisions": [], "used": False}
    fast, decisions = choose_block_format(small, input_shape, batch_size=256, repeats=20)
    out: dict[str, Any] = {"decisions": decisions, "used": any(d["used_block_format"] for d in decisions)}
    if out["used"]:
        out["latency_ms"] = measure_latency_pair(dense, fast, input_shape)
    return out


def tradeoff_curve(model, result: CompressionResult, data, points: int = 19) -> list[dict[str, float]]:
    """Validation and test error of the masked posterior mean along one threshold shared by all layers; the grid
    spans the pooled group statistics (their range differs by method: log alpha, -E[log z], ...)."""
    pooled = torch.cat([s.double().flatten() for s in result.log_alpha])
    pooled = pooled[torch.isfinite(pooled)]
    if result.stat_names is not None:  # a graph: evaluate the pruned network at each point (fewer points)
        grid = torch.quantile(pooled, torch.linspace(0.05, 1.0, max(points // 2, 2), dtype=torch.float64)) + 1e-6
        return _graph_tradeoff(model, result, data, sorted({float(t) for t in grid}))
    grid = torch.quantile(pooled, torch.linspace(0.05, 1.0, points, dtype=torch.float64)) + 1e-6
    chain = build_chain(model)
    with deterministic_mode(model):
        return sweep_global_thresholds(
            chain, result.log_alpha,
            {"val": lambda: evaluate(model, data.val)["error_pct"],
             "test": lambda: evaluate(model, data.test)["error_pct"]}, sorted({float(t) for t in grid}))


def _graph_tradeoff(model, result: CompressionResult, data, grid: list[float]) -> list[dict[str, float]]:
    from bayescomp.compress import PruneError

    graph, curve = result.graph, []
    for threshold in grid:
        try:
            small = graph.prune(graph.keep_from_thresholds([threshold] * len(graph.prunable_groups)))
        except PruneError:
            continue
        kept = sum(m.weight.numel() for m in prunable_modules(small))
        curve.append({"threshold": threshold, "weights_kept": kept,
                      "compression_architecture": result.weights_dense / kept,
                      "flops": measure.count_flops(small, tuple(data.input_shape)),
                      "val_error_pct": evaluate(small, data.val)["error_pct"],
                      "test_error_pct": evaluate(small, data.test)["error_pct"]})
    return curve


LOG_ALPHA_LEVELS = (-3.0, 0.0, 3.0)  # BC tutorial: keep below -3; Sparse VD: prune above 3


def posterior_log_alpha_counts(model, levels: tuple[float, ...] = LOG_ALPHA_LEVELS) -> dict[str, Any] | None:
    """How many groups of the trained posterior have log alpha above each level: whether the training itself
    switched groups off or a budget will cut groups the posterior still uses. ``None`` for a model without group
    statistics. Louizos et al. keep a group while log alpha < about -3 (their tutorial's thresholds, -2.8 to -5),
    Molchanov et al. prune above 3; at -3 a group's noise has a standard deviation of 0.22 times its mean."""
    stats = []
    for _, layer in bayesian_layers(model):
        try:
            stats.append(layer.group_log_alpha().detach().float().cpu().reshape(-1))
        except NotImplementedError:
            continue
    if not stats:
        return None
    values = torch.cat(stats)
    return {"groups": int(values.numel()),
            "above": {f"{level:g}": int((values > level).sum()) for level in levels}}


def build_report(config, data, dense, model, result: CompressionResult, history, dense_eval, bayes_eval,
                 file_bytes: int, run_dir: Path, started: float, command: str, commit: str | None) -> Report:
    """Measure everything about the compressed model and collect it in one JSON-serialisable dict, shaped as
    :class:`bayescomp.report_schema.Report` (the schema the benchmarks and tests read)."""
    pruned_eval = evaluate(result.model, data.test)
    quant_eval = evaluate(result.quantized_model, data.test)
    input_shape = tuple(data.input_shape)
    dense_file = measure.state_dict_size_bytes(dense)
    report: Report = {
        "model": config.model, "data": config.data, "method": config.method, "seed": config.seed,
        "test_error_pct": quant_eval["error_pct"],
        "test_error_pct_pruned": pruned_eval["error_pct"],
        "test_error_pct_bayes": None if bayes_eval is None else bayes_eval["error_pct"],
        "dense_test_error_pct": dense_eval["error_pct"],
        "val_error_pct_bayes": result.base_val_error_pct,
        "architecture_dense": _arch(result.architecture_dense),
        "kept_architecture": _arch(result.architecture_kept),
        "layers": result.layer_names,
        "thresholds": result.thresholds,
        "compression_path": "chain" if result.stat_names is None else "graph",
        "coupled_groups": None if result.stat_names is None else [
            {"root": name, "channels": int(stat.numel()), "kept": int((stat < threshold).sum())}
            for name, stat, threshold in zip(result.stat_names, result.log_alpha, result.thresholds)],
        "weights_dense": result.weights_dense,
        "weights_kept": result.weights_kept,
        "kept_weight_fraction": result.weights_kept / result.weights_dense,
        "compression_architecture": result.compression_architecture,
        "weights_nonzero": result.weights_nonzero,
        "compression_nonzero": result.compression_nonzero,
        "compression_csr": result.compression_csr(),
        "compression_csr_bits": result.compression_csr(quantized=True),
        "compression_bits": result.compression_bits,
        "compression_file": dense_file / file_bytes,
        "file_bytes_dense": dense_file,
        "file_bytes_compressed": file_bytes,
        "bits_per_layer": result.bits_per_layer,
        "significand_bits_per_layer": [p.significand_bits for p in result.precisions],
        "exponent_bits": result.precisions[0].exponent_bits if result.precisions else None,
        "flops_dense": measure.count_flops(dense, input_shape),
        "flops_compressed": measure.count_flops(result.model, input_shape),
        "flops_compressed_nonzero": measure.count_flops(result.model, input_shape, nonzero_only=True),
        "epochs": config.bayes.epochs,
        "dense_epochs": config.dense.epochs,
        "finetune_epochs": config.finetune.epochs,
        "epoch_s_mean": sum(e.get("epoch_s", 0.0) for e in history.epochs) / max(len(history.epochs), 1),
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "config": config.to_dict(),
        "command": command,
        "git_commit": commit,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    report.update(regularity_fields(dense, result.quantized_model))
    report["calibration"] = calibration_report(result.quantized_model, data.test)
    if config.latency:
        report["latency_ms"] = measure_latency_pair(dense, result.quantized_model, input_shape)
        report["block_format"] = block_format_latency(dense, result.quantized_model, input_shape)
        report["runtime_latency"] = compare_runtimes(dense, result.quantized_model, input_shape)
    report["tradeoff_curve"] = [] if model is None else tradeoff_curve(model, result, data)
    report["posterior_log_alpha"] = None if model is None else posterior_log_alpha_counts(model)
    report["search_path"] = result.search_path
    report["history"] = history.epochs
    report["wall_time_s"] = time.perf_counter() - started
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    bayes_row = ([] if report.get("test_error_pct_bayes") is None else
                 [f"| Bayesian (posterior mean, unpruned) | {report['test_error_pct_bayes']:.2f} % | "
                  f"{report['architecture_dense']} | {report['weights_dense']:,} |"])
    lines = [
        f"# bayescomp report: {report['model']} on {report['data']}, method {report['method']}",
        "",
        *[f"> **Warning:** {text}" for text in report_warnings(report)],
        *([""] if report_warnings(report) else []),
        "| | test error | architecture | weights |",
        "|---|---|---|---|",
        f"| dense | {report['dense_test_error_pct']:.2f} % | {report['architecture_dense']} | {report['weights_dense']:,} |",
        *bayes_row,
        f"| pruned | {report['test_error_pct_pruned']:.2f} % | {report['kept_architecture']} | {report['weights_kept']:,} |",
        f"| pruned + quantised | {report['test_error_pct']:.2f} % | {report['kept_architecture']} | "
        f"{report['weights_kept']:,} |",
        "",
        f"- **Architecture compression** {report['compression_architecture']:.1f}x "
        "(all weights / weights of the pruned dense layers; biases excluded)",
    ]
    if "weights_nonzero" in report and report["weights_nonzero"] < report["weights_kept"]:
        lines += [
            f"- **Non-zero weights** {report['weights_nonzero']:,}: parameter ratio {report['compression_nonzero']:.1f}x "
            f"(all weights / non-zero weights); CSR {report['compression_csr']:.1f}x with float32 values, "
            f"{report['compression_csr_bits']:.1f}x at the layers' bit widths (32 x all weights / bits of values + "
            "column indices + row pointers)",
        ]
    lines += [
        f"- **Bit compression** {report['compression_bits']:.1f}x (32 x all weights / sum of kept weights x bits); "
        f"bits per layer {report['bits_per_layer']} (1 sign + {report['exponent_bits']} exponent + significand "
        f"{report['significand_bits_per_layer']})",
        f"- **File-size compression** {report['compression_file']:.1f}x ({report['file_bytes_dense']:,} bytes of "
        f"float32 state_dict / {report['file_bytes_compressed']:,} bytes packed)",
        f"- **FLOPs** (multiply-accumulates per example) {report['flops_dense']:,} -> {report['flops_compressed']:,} "
        f"({report['flops_dense'] / max(report['flops_compressed'], 1):.1f}x fewer)",
        f"- **Regularity** (4x4 tiles of the GEMM matrices): {100 * report['dense_block_share']:.1f} % of the non-zero "
        f"weights in fully dense tiles, {report['nonzero_blocks']:,} non-zero tiles "
        f"({report['blocks_per_nonzero']:.3f} per non-zero weight), mean run along rows "
        f"{report['mean_row_run']:.1f}, {report['neurons_removed']} neurons/filters removed",
        f"- thresholds (keep groups whose statistic is below): {', '.join(f'{t:.2f}' for t in report['thresholds'])}",
    ]
    counts = report.get("posterior_log_alpha")
    if counts:
        lines.append(f"- **Posterior** (before the cut): of {counts['groups']:,} groups, "
                     + ", ".join(f"{n:,} have log alpha > {level}" for level, n in counts["above"].items()))
    latency = report.get("latency_ms")
    if latency:
        lines += [
            "",
            f"Latency (CPU, float32, {latency['threads']} threads, median):",
            "",
            "| batch | dense ms | compressed ms | speed-up |",
            "|---|---|---|---|",
        ]
        for key in ("batch_1", "batch_256", "batch_1_1thread"):
            if key not in latency["dense"]:
                continue
            label = key.replace("batch_", "").replace("_1thread", " (1 thread)")
            lines.append(f"| {label} | {latency['dense'][key]:.3f} | {latency['compressed'][key]:.3f} "
                         f"| {latency['speedup'][key]:.1f}x |")
    if report.get("runtime_latency"):
        lines += [""] + format_runtime_latency(report["runtime_latency"])
    calibration = report.get("calibration")
    if calibration:
        curve = {round(p["rejected_fraction"], 2): p["accuracy_pct"] for p in calibration["rejection_curve"]}
        lines += ["", f"Calibration of the compressed model on the test set: expected calibration error "
                  f"{100 * calibration['ece']:.2f} % ({calibration['bins']} bins); accuracy "
                  f"{curve.get(0.0, float('nan')):.2f} % on all, {curve.get(0.1, float('nan')):.2f} % after rejecting "
                  f"the 10 % least confident, {curve.get(0.5, float('nan')):.2f} % after rejecting half."]
    blocks = report.get("block_format")
    if blocks:
        used = [d for d in blocks["decisions"] if d["used_block_format"]]
        lines += ["", "Block-sparse (4x4 BSR) execution of the Linear layers, timed per layer at batch 256: "
                  + (", ".join(f"layer {d['layer']} {d['speedup']:.1f}x" for d in used) + " faster, so the "
                     f"block-format model runs at {blocks['latency_ms']['compressed']['batch_256']:.3f} ms "
                     "(batch 256)" if used else "no layer is faster than dense; the dense-pruned model is kept")]
    before = report.get("test_error_pct_pruned_before_finetune")
    described = get_method(report["method"]).describe(report) if report["method"] in METHODS else []
    if described:
        lines += ["", *described]
    elif report.get("finetune_epochs") and before is not None:
        lines += ["", f"The pruned model was fine-tuned (plain training of the kept weights) for "
                  f"{report['finetune_epochs']} epochs before quantisation; its test error before fine-tuning was "
                  f"{before:.2f} %.{_finetuned_validation_sentence(report.get('finetune_validation'))}"]
    step = " (compiled step)" if report.get("compiled_step") else ""
    training = (f"Bayesian training: {report['epochs']} epochs, {report['epoch_s_mean']:.1f} s/epoch{step}; "
                if report.get("epochs") else "")
    lines += ["", f"{training}wall time {report['wall_time_s']:.0f} s. Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def _finetuned_validation_sentence(record: dict[str, Any] | None) -> str:
    """`` Validation error after fine-tuning 9.46 % (9.82 % on the 4,000 images the search did not read).``"""
    if not record or record.get("val_error_pct_after") is None:
        return ""
    unseen = ("" if record.get("val_error_pct_after_unseen") is None else
              f" ({record['val_error_pct_after_unseen']:.2f} % on the {record['val_images_unseen']:,} images the "
              "search did not read)")
    return f" Validation error after fine-tuning {record['val_error_pct_after']:.2f} %{unseen}."


def write_report(report: dict[str, Any], run_dir: Path, model=None, result=None, data=None, plots: bool = True):
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    (run_dir / "report.md").write_text(render_markdown(report))
    if plots and result is not None:
        from bayescomp.plots import plot_all

        report["plots"] = plot_all(report, result, data, run_dir / "plots")
        (run_dir / "report.json").write_text(json.dumps(report, indent=2))


def load_report(run_dir: str | Path) -> Report:
    """The report of a finished run directory, checked against the schema (:data:`REQUIRED_KEYS` are derived from
    :class:`~bayescomp.report_schema.Report`), so a cut or foreign file is refused with its faults named instead of
    failing later inside the renderer."""
    path = Path(run_dir) / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"no report in {run_dir} (expected {path}); run `bayescomp run` first")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); run `bayescomp run` again") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} holds a JSON {type(report).__name__}, not a report object; run `bayescomp run` again")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; it was not written by `bayescomp run` (or by an older "
                         "version), or was damaged: run `bayescomp run` again")
    problems = check_report(report)
    if problems:
        raise ValueError(f"{path} does not match the report schema ({'; '.join(problems[:5])}); it was damaged or "
                         "edited: run `bayescomp run` again")
    return report


#: Fewer validation examples than this make the threshold search's error estimate too coarse to trust.
SMALL_VAL = 500


def report_warnings(report: dict[str, Any]) -> list[str]:
    """Conditions under which the report's headline figures mislead (issue 15, item 5).

    A compression ratio of a network at chance accuracy, or chosen on a handful of validation examples, or
    that kept almost nothing, is not a result; the report says so next to the figures.
    """
    classes = int(report.get("num_classes") or 10)
    chance = 100.0 * (1 - 1 / classes)
    out = []
    for key, name in (("dense_test_error_pct", "dense model"), ("test_error_pct_bayes", "Bayesian model"),
                      ("test_error_pct", "compressed model")):
        value = report.get(key)
        if value is not None and value >= 0.8 * chance:
            out.append(f"the {name} is at or near chance accuracy (test error {value:.2f} %, chance "
                       f"{chance:.1f} %): its compression figures do not describe a working network")
    n_val = report.get("n_val")
    if n_val is not None and n_val < SMALL_VAL:
        out.append(f"the validation split has only {n_val} examples: the pruning level chosen on it is unreliable "
                   f"(use --val-size >= {SMALL_VAL})")
    kept, dense = report.get("weights_kept"), report.get("weights_dense")
    hidden = [int(w) for w in str(report.get("kept_architecture", "")).split("-")[:-1] if w.strip().isdigit()]
    if (kept is not None and dense and kept / dense < 1e-3) or any(w <= 1 for w in hidden):
        out.append(f"the compressed network kept almost nothing ({report.get('kept_architecture')}, {kept} of "
                   f"{dense} weights): check its test error before reading the compression ratio")
    return out


def render_generated_markdown(report: dict[str, Any]) -> str:
    """The report of a network generated by the conditional hypernetwork (``bayescomp hyper generate``)."""
    lines = [f"# {report.get('model_key', '')} on {report.get('data', '')}: generated for classes "
             f"{report['classes']} at budget {report['budget']:g}", "",
             "| metric | value |", "|---|---|",
             f"| classes | {', '.join(f'{c} ({n})' for c, n in zip(report['classes'], report['class_names']))} |",
             f"| test error on the context's classes | {report['test_error_pct']:.2f} % "
             f"({report['test_examples']} examples) |"]
    if report.get("teacher_test_error_pct_on_context") is not None:
        lines.append(f"| dense teacher on the same classes | {report['teacher_test_error_pct_on_context']:.2f} % |")
    lines += [f"| kept architecture | {report['kept_architecture']} |",
              f"| weights | {report['weights_kept']:,} of {report['weights_dense']:,} "
              f"({report['compression_weights']:.1f}x) |",
              f"| multiply-accumulates | {report['flops']:,} of {report['flops_dense']:,} "
              f"({100 * report['flops_fraction']:.1f} %) |",
              f"| log-alpha threshold | {report['threshold']:.3g} |"]
    if "bits_per_layer" in report:
        lines += [f"| bits per layer (from the posterior variance) | {'-'.join(map(str, report['bits_per_layer']))} "
                  f"({report['compression_bits']:.1f}x with bits) |",
                  f"| test error at those bits | {report['test_error_pct_quantized']:.2f} % |"]
    lines.append(f"| generation time | {report['generate_ms']:.1f} ms |")
    if "file_bytes" in report:
        lines.append(f"| file | {report['file_bytes']:,} bytes (dense state_dict {report['dense_file_bytes']:,}) |")
    if "latency_ms" in report:
        lat = report["latency_ms"]
        lines.append(f"| CPU latency batch 1 / 256 | {lat['dense']['batch_1']:.3f} -> {lat['compressed']['batch_1']:.3f}"
                     f" ms / {lat['dense']['batch_256']:.2f} -> {lat['compressed']['batch_256']:.2f} ms |")
    return "\n".join(lines) + "\n"
