"""Conditional compression with the Bayesian hypernetwork (issue 7): generated networks against baselines.

    python -m benchmarks.hyper_contexts --data mnist
    python -m benchmarks.hyper_contexts --data fashion-mnist

1. Trains (or resumes) the hypernetwork for LeNet-5-Caffe into ``runs/hyper_lenet5_<data>`` and calibrates its
   generation threshold on validation contexts (:mod:`bayescomp.hyper.pipeline`).
2. 50 random contexts of 2 to 5 classes (seeded), budget 1: generation time (first call and median of 5),
   test error on the context's classes, weights and multiply-accumulates of the generated network, and the dense
   teacher's error on the same classes.
3. Baselines on the first ``--retrain`` contexts: BC-GNJ retrained for the context (teacher cut to the context's
   classes, trained on their data, compressed with the automatic search on their validation data), and global
   magnitude pruning of the cut teacher to the generated network's size with fine-tuning. On every context: the
   unconditional BC-GNJ model with its output cut to the context; by default one trained for the hypernetwork's
   own 30 epochs (``--unconditional equal``, kept as ``hyper_lenet5_<data>/unconditional_gnj.bcz``), or the
   longer Table 1 model (``--unconditional table1``).
4. Budgets 1, 0.5, 0.2, 0.1, 0.05 on the first 10 contexts; contexts of every size 2..10 for the size plot.

Writes benchmarks/results/lenet5_<data>_hyper.{json,md}, plots, the trained hypernetwork
(benchmarks/results/hyper_lenet5_<data>/hyper.pt, usable by ``bayescomp hyper generate``) and one generated model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from bayescomp import bayesify, load
from bayescomp.compress import compress
from bayescomp.compress import CompressConfig, prunable_modules
from bayescomp.data import DataBundle
from bayescomp.hyper import Context, context_error, generate, random_contexts, restrict
from bayescomp.hyper.pipeline import HyperRunConfig, _cut_teacher, _run_config, load_run_data, train_run
from bayescomp.magnitude import MagnitudeConfig, magnitude_compress, prune_and_finetune
from bayescomp.pipeline import DEFAULT_LR_SCALES, dense_model
from bayescomp.train import TrainConfig, evaluate, fit, seed_everything
from benchmarks._common import RESULTS, this_command
from benchmarks.device_stage import sha256_of


def context_bundle(data: DataBundle, classes) -> DataBundle:
    return DataBundle(data.name, restrict(data.train, classes), restrict(data.val, classes),
                      restrict(data.test, classes), len(classes), data.input_shape, data.mean, data.std,
                      tuple(data.class_names[c] for c in classes))


def weights_of(model) -> int:
    return sum(m.weight.numel() for m in prunable_modules(model))


def retrain_gnj(teacher, data: DataBundle, classes, epochs: int, seed: int) -> dict:
    """BC-GNJ trained for one context from the cut teacher (the slow, strong reference)."""
    started = time.perf_counter()
    bundle = context_bundle(data, classes)
    seed_everything(seed)
    model = bayesify(_cut_teacher(teacher, classes), "gnj")
    fit(model, bundle, TrainConfig(epochs=epochs, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=min(2, epochs / 5),
                                   seed=seed, lr_scales=dict(DEFAULT_LR_SCALES["gnj"])), progress=False,
        log=lambda *_: None)
    result = compress(model, bundle.val, CompressConfig(tolerance_pct=0.2))
    return {"retrain_test_error_pct": evaluate(result.model, bundle.test)["error_pct"],
            "retrain_val_error_pct": evaluate(result.model, bundle.val)["error_pct"],
            "retrain_weights_kept": result.weights_kept, "retrain_s": time.perf_counter() - started,
            "retrain_kept_architecture": "-".join(map(str, result.architecture_kept)), "retrain_epochs": epochs}


def magnitude_at_size(teacher, data: DataBundle, classes, weights: int, epochs: int, seed: int) -> dict:
    """Global unstructured magnitude pruning of the cut teacher to ``weights`` non-zeros, fine-tuned."""
    started = time.perf_counter()
    bundle = context_bundle(data, classes)
    model = _cut_teacher(teacher, classes)
    sparsity = 1.0 - weights / weights_of(model)
    masks = prune_and_finetune(model, bundle, MagnitudeConfig(sparsity=sparsity, rounds=2),
                               TrainConfig(epochs=epochs, lr=1e-3, lr_schedule="cosine", seed=seed),
                               log=lambda *_: None)
    result = magnitude_compress(model, masks)
    return {"magnitude_test_error_pct": evaluate(result.model, bundle.test)["error_pct"],
            "magnitude_weights_nonzero": result.weights_nonzero, "magnitude_s": time.perf_counter() - started}


def unconditional_model(data_name: str, kind: str, log,
                        run_dir: Path | None = None) -> tuple[torch.nn.Sequential, str, int]:
    """The unconditional BC-GNJ LeNet-5 the generated networks are compared with, and its training epochs.

    ``kind="equal"`` (default): trained with the default recipe, 30 Bayesian epochs and no fine-tuning, the
    hypernetwork's own epochs, so neither side has more training (issue 20); a copy committed beside the results
    (``hyper_lenet5_<data>/unconditional_gnj.bcz``) is reused. ``run_dir``: a finished ``bayescomp run`` of that
    recipe (another seed's split) whose compressed model replaces the committed copy. ``kind="table1"``: the
    Table 1 model (``lenet5_<data>_gnj.bcz``, 90 epochs plus fine-tuning on MNIST), a stronger baseline than the
    budget allows.
    """
    from bayescomp.pipeline import RunConfig, run

    if kind == "table1":
        path = RESULTS / f"lenet5_{data_name}_gnj.bcz"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/table1.py first, or use --unconditional equal")
        epochs = json.loads(path.with_suffix(".json").read_text()).get("epochs")
        return load(path), str(path.relative_to(RESULTS.parent.parent)), epochs
    config = RunConfig(model="lenet5", data=data_name, method="gnj", latency=False, plots=False)
    committed = RESULTS / f"hyper_lenet5_{data_name}" / "unconditional_gnj.bcz"
    if run_dir is None and committed.exists():
        return load(committed), str(committed.relative_to(RESULTS.parent.parent)), config.bayes.epochs
    if run_dir is None:
        run_dir = Path(f"runs/hyper_baseline_lenet5_{data_name}_gnj")
        log(f"training the unconditional BC-GNJ model ({config.bayes.epochs} epochs) into {run_dir}")
        run(config, run_dir, progress=False, log=log)
    elif not (run_dir / "compressed.bcz").exists():
        raise SystemExit(f"{run_dir} has no compressed.bcz: finish that run first")
    committed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "compressed.bcz", committed)
    epochs = json.loads((run_dir / "run.json").read_text())["bayes"]["epochs"]
    return load(committed), str(committed.relative_to(RESULTS.parent.parent)), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--epochs", type=int, default=30, help="hypernetwork training epochs")
    parser.add_argument("--contexts", type=int, default=50)
    parser.add_argument("--retrain", type=int, default=10, help="contexts with the per-context baselines")
    parser.add_argument("--retrain-epochs", type=int, default=10)
    parser.add_argument("--magnitude-epochs", type=int, default=2)
    parser.add_argument("--budgets", default="1,0.5,0.2,0.1,0.05")
    parser.add_argument("--budget-contexts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a HyperConfig field, e.g. --option budget_masking=true")
    parser.add_argument("--reuse-baselines", default=None, metavar="JSON",
                        help="take the retrained BC-GNJ figures of matching contexts from an earlier result file (they "
                             "do not depend on the hypernetwork); magnitude pruning is redone at the new sizes")
    parser.add_argument("--unconditional", choices=("equal", "table1"), default="equal",
                        help="the unconditional BC-GNJ baseline: trained for the hypernetwork's epochs (equal) or "
                             "the longer Table 1 model")
    parser.add_argument("--unconditional-run", type=Path, default=None, metavar="RUN_DIR",
                        help="a finished `bayescomp run` of the equal-epoch BC-GNJ recipe on this --seed's split; its "
                             "compressed model becomes the committed unconditional baseline")
    parser.add_argument("--out-suffix", default="", help="suffix of the result names (variants)")
    args = parser.parse_args()
    log = print
    started = time.perf_counter()
    config = HyperRunConfig(model="lenet5", data=args.data, seed=args.seed)
    config.train = replace(config.train, epochs=args.epochs, seed=args.seed)  # as `bayescomp hyper train --seed`
    from bayescomp.cli import _options
    from bayescomp.hyper import HyperConfig

    config.hyper = HyperConfig(**_options(args.option, HyperConfig))
    reused = {}
    if args.reuse_baselines:
        for e in json.loads(Path(args.reuse_baselines).read_text())["entries"]:
            if "retrain_s" in e:
                reused[tuple(e["classes"])] = {k: v for k, v in e.items() if k.startswith("retrain_")}
    run_dir = Path(args.run_dir or f"runs/hyper_lenet5_{args.data}")
    hyper = train_run(config, run_dir, progress=False)
    hyper.eval()
    train_summary = json.loads((run_dir / "train.json").read_text())
    data = load_run_data(config)
    teacher = dense_model(_run_config(config), data, log=lambda *_: None, progress=False)
    unconditional, unconditional_file, unconditional_epochs = unconditional_model(args.data, args.unconditional, log,
                                                               args.unconditional_run)
    contexts = random_contexts(args.contexts, data.num_classes, [2, 3, 4, 5], seed=2026 + args.seed)
    entries = []
    for i, context in enumerate(contexts):
        first = generate(hyper, context)
        times = [first.generate_ms] + [generate(hyper, context).generate_ms for _ in range(4)]
        entries.append({
            "classes": list(context.classes), "budget": context.budget,
            "test_error_pct": context_error(first.model, data.test, context.classes),
            "weights_kept": first.weights_kept, "flops": first.flops, "flops_fraction": first.flops_fraction,
            "kept_architecture": "-".join(map(str, first.kept_architecture)),
            "bits_per_layer": first.bits_per_layer, "compression_bits": first.compression_bits,
            "test_error_pct_quantized": context_error(first.quantized_model, data.test, context.classes),
            "generate_ms": statistics.median(times), "generate_ms_first": times[0],
            "teacher_test_error_pct": context_error(_cut_teacher(teacher, context.classes), data.test,
                                                    context.classes),
            "unconditional_test_error_pct": context_error(_cut_teacher(unconditional, context.classes),
                                                          data.test, context.classes),
            "unconditional_weights_kept": weights_of(_cut_teacher(unconditional, context.classes))})
        log(f"context {i + 1}/{len(contexts)} {list(context.classes)}: err {entries[-1]['test_error_pct']:.2f}% "
            f"weights {first.weights_kept:,} ({entries[-1]['kept_architecture']}), {entries[-1]['generate_ms']:.1f} ms")

    budgets = [float(b) for b in args.budgets.split(",")]
    budget_rows = []
    for context in contexts[:args.budget_contexts]:
        for budget in budgets:
            ctx = Context.make(context.classes, data.num_classes, budget)
            gen = generate(hyper, ctx)
            budget_rows.append({"classes": list(ctx.classes), "budget": budget, "weights_kept": gen.weights_kept,
                                "flops_fraction": gen.flops_fraction, "threshold": gen.threshold,
                                "test_error_pct": context_error(gen.model, data.test, ctx.classes)})
    size_rows = []
    for k in range(2, data.num_classes + 1):
        for context in random_contexts(5, data.num_classes, [k], seed=99 + k):
            gen = generate(hyper, context)
            size_rows.append({"k": k, "classes": list(context.classes), "weights_kept": gen.weights_kept,
                              "flops_fraction": gen.flops_fraction,
                              "test_error_pct": context_error(gen.model, data.test, context.classes)})

    stem = f"lenet5_{args.data}_hyper{args.out_suffix}"
    out_dir = RESULTS / f"hyper_lenet5_{args.data}{args.out_suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "hyper.pt", out_dir / "hyper.pt")
    shutil.copyfile(run_dir / "hyper_run.json", out_dir / "hyper_run.json")
    example = generate(hyper, contexts[0])
    from bayescomp.compress import save_quantized

    save_quantized(example.quantized_model, example.precisions, out_dir / "generated_example.bcz",
                   {"classes": list(contexts[0].classes), "budget": 1.0, "kind": "hyper-generated",
                    "bits_per_layer": example.bits_per_layer})
    record = {"model": "lenet5", "data": args.data, "method": "hyper", "stem": stem, "summary": {},
              "entries": entries, "hyper_options": args.option, "seed": args.seed,
              "budgets": budget_rows, "sizes_by_classes": size_rows,
              "hypernetwork": {"file": f"benchmarks/results/{out_dir.name}/hyper.pt",
                               "sha256": sha256_of(out_dir / "hyper.pt"),
                               "threshold": float(hyper.threshold), "config": train_summary["config"],
                               "train_s": train_summary["train_s"], "calibration": train_summary["calibration"],
                               "teacher_test_error_pct": train_summary["teacher_test_error_pct"],
                               "epoch_s_mean": statistics.fmean(h["epoch_s"] for h in train_summary["history"])},
              "unconditional_file": unconditional_file, "unconditional_epochs": unconditional_epochs,
              "hypernetwork_epochs": args.epochs, "example_generated_file":
                  f"benchmarks/results/{out_dir.name}/generated_example.bcz",
              "command": this_command(), "device": "cpu", "torch_threads": torch.get_num_threads()}
    plot(record, RESULTS / "plots")
    write(record, started, args.retrain)
    # the slow per-context baselines last; the record is rewritten after each, so a stopped run keeps its results
    for i, (context, entry) in enumerate(zip(contexts[:args.retrain], entries)):
        previous = reused.get(tuple(context.classes))
        if previous and previous.get("retrain_epochs") == args.retrain_epochs:
            entry.update(previous, retrain_reused_from=args.reuse_baselines)
        else:
            entry.update(retrain_gnj(teacher, data, context.classes, args.retrain_epochs, args.seed))
        entry["generate_vs_retrain_ratio"] = entry["generate_ms"] / 1000.0 / entry["retrain_s"]
        entry.update(magnitude_at_size(teacher, data, context.classes, entry["weights_kept"],
                                       args.magnitude_epochs, args.seed))
        log(f"baselines {i + 1}/{args.retrain} {list(context.classes)}: generated {entry['test_error_pct']:.2f}% "
            f"{entry['weights_kept']:,}; retrained GNJ {entry['retrain_test_error_pct']:.2f}% "
            f"{entry['retrain_weights_kept']:,} in {entry['retrain_s']:.0f}s; magnitude "
            f"{entry['magnitude_test_error_pct']:.2f}%")
        write(record, started, args.retrain)
    log(json.dumps(record["summary"], indent=2))


def summarize(entries: list[dict], budget_rows: list[dict]) -> dict:
    retrained = [e for e in entries if "retrain_s" in e]
    med = lambda key, rows=entries: statistics.median(e[key] for e in rows)  # noqa: E731
    by_context: dict[tuple, list[dict]] = {}
    for row in budget_rows:
        by_context.setdefault(tuple(row["classes"]), []).append(row)
    monotone = all(all(a["flops_fraction"] >= b["flops_fraction"] and a["weights_kept"] >= b["weights_kept"]
                       for a, b in zip(rows, rows[1:]))
                   for rows in (sorted(r, key=lambda x: -x["budget"]) for r in by_context.values()))
    summary = {
        "contexts": len(entries), "median_test_error_pct": med("test_error_pct"),
        "median_weights_kept": med("weights_kept"), "median_flops_fraction": med("flops_fraction"),
        "median_compression_bits": med("compression_bits"),
        "median_generate_ms": med("generate_ms"), "max_generate_ms": max(e["generate_ms"] for e in entries),
        "max_generate_ms_first": max(e["generate_ms_first"] for e in entries),
        "median_teacher_test_error_pct": med("teacher_test_error_pct"),
        "median_unconditional_test_error_pct": med("unconditional_test_error_pct"),
        "median_unconditional_weights_kept": med("unconditional_weights_kept"),
        "retrained_contexts": len(retrained), "budget_monotone": monotone,
        "budgets_within_cap": all(r["flops_fraction"] <= r["budget"] + 1e-12 for r in budget_rows),
    }
    if retrained:
        summary.update({
            "median_retrain_test_error_pct": med("retrain_test_error_pct", retrained),
            "median_retrain_weights_kept": med("retrain_weights_kept", retrained),
            "median_retrain_s": med("retrain_s", retrained),
            "median_generate_vs_retrain_ratio": med("generate_vs_retrain_ratio", retrained),
            "median_magnitude_test_error_pct": med("magnitude_test_error_pct", retrained),
            "contexts_within_0_5_of_retrain": sum(e["test_error_pct"] <= e["retrain_test_error_pct"] + 0.5
                                                  for e in retrained),
            "contexts_no_larger_than_retrain": sum(e["weights_kept"] <= e["retrain_weights_kept"] for e in retrained),
            "contexts_both": sum(e["test_error_pct"] <= e["retrain_test_error_pct"] + 0.5
                                 and e["weights_kept"] <= e["retrain_weights_kept"] for e in retrained),
        })
    return summary


def write(record: dict, started: float, planned_retrain: int) -> None:
    record["summary"] = summarize(record["entries"], record["budgets"])
    record["complete"] = record["summary"]["retrained_contexts"] >= planned_retrain
    record["wall_time_s"] = time.perf_counter() - started
    (RESULTS / f"{record['stem']}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{record['stem']}.md").write_text(markdown(record))


def plot(record: dict, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    stem = record["stem"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ks = sorted({r["k"] for r in record["sizes_by_classes"]})
    for ax, key, label in ((axes[0], "weights_kept", "weights kept"), (axes[1], "test_error_pct",
                                                                        "test error on the context (%)")):
        ax.scatter([r["k"] for r in record["sizes_by_classes"]], [r[key] for r in record["sizes_by_classes"]], s=12)
        ax.plot(ks, [statistics.median(r[key] for r in record["sizes_by_classes"] if r["k"] == k) for k in ks], "-o")
        ax.set_xlabel("classes in the context")
        ax.set_ylabel(label)
    fig.suptitle(f"Generated LeNet-5 on {record['data']} (budget 1): size and error against the context size")
    fig.tight_layout()
    fig.savefig(directory / f"{stem}_classes.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    budgets = sorted({r["budget"] for r in record["budgets"]})
    for ax, key, label in ((axes[0], "flops_fraction", "multiply-accumulates / dense"),
                           (axes[1], "test_error_pct", "test error on the context (%)")):
        for classes in {tuple(r["classes"]) for r in record["budgets"]}:
            rows = sorted((r for r in record["budgets"] if tuple(r["classes"]) == classes), key=lambda r: r["budget"])
            ax.plot([r["budget"] for r in rows], [r[key] for r in rows], "-o", alpha=0.5, ms=3)
        ax.set_xscale("log")
        ax.set_xlabel("budget")
        ax.set_ylabel(label)
    axes[0].plot(budgets, budgets, "k--", label="budget")
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"Generated LeNet-5 on {record['data']}: one line per context")
    fig.tight_layout()
    fig.savefig(directory / f"{stem}_budget.png", dpi=110)
    plt.close(fig)


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [f"# Conditional compression, LeNet-5-Caffe on {record['data']}", "",
             f"Command: `{record['command']}` (CPU, {record['torch_threads']} threads)", "",
             "| figure | value |", "|---|---|"]
    for key, value in s.items():
        lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "| classes | generated err % | weights | MACs % | ms | retrained GNJ err % | weights | s | "
              "magnitude err % | unconditional BC err % | weights |", "|---" * 11 + "|"]
    for e in record["entries"]:
        lines.append(
            f"| {','.join(map(str, e['classes']))} | {e['test_error_pct']:.2f} | {e['weights_kept']:,} | "
            f"{100 * e['flops_fraction']:.1f} | {e['generate_ms']:.1f} | "
            + (f"{e['retrain_test_error_pct']:.2f} | {e['retrain_weights_kept']:,} | {e['retrain_s']:.0f} | "
               f"{e['magnitude_test_error_pct']:.2f}" if "retrain_s" in e else "– | – | – | –")
            + f" | {e['unconditional_test_error_pct']:.2f} | {e['unconditional_weights_kept']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
