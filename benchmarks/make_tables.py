"""Generate RESULTS.md from benchmarks/results/*.json (every table in it is computed, never typed by hand).

    python -m benchmarks.make_tables          # (or `make tables`) rewrites RESULTS.md and the README's headline table
    python -m benchmarks.make_tables --check  # exit 1 if either is out of date (the test suite runs this)

Rows whose post-training setting was chosen after looking at test-set figures are marked with
:data:`TEST_SET_MARK` and explained under :data:`CHOSEN_ON_TEST`, so a reader can discount them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks._common import (
    blind_reruns, blind_variants, finetune_undone, headline_equal_error, seed_mean_std, seed_spread_text,
)
from benchmarks.acceptance import acceptance_table
from benchmarks.published import PUBLISHED  # one list of published figures for both tables
from benchmarks.result_sections import (
    cifar_section,
    ddp_section,
    hyper_options_text,
    hyper_section,
    onnx_section,
    other_sections,
    self_compression_section,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUTPUT = ROOT / "RESULTS.md"
README = ROOT / "README.md"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
TEST_SET_MARK = "†"

#: (model, method) -> why its committed setting is not a blind choice (the test set was looked at).
CHOSEN_ON_TEST = {
    ("lenet300", "gnj"): "search tolerance raised from 0.2 to 0.4 after reading the test errors of both "
                         "(variants table at the end)",
    ("lenet5", "gnj"): "search tolerance raised step by step (0.2, 0.3, 0.8, 1.0) after reading each setting's "
                       "test error (variants table at the end)",
    ("lenet5", "ghs"): "search tolerance 2.0 and 20 fine-tuning epochs at 1e-3 picked after trying two settings "
                       "and reading their test errors (settings table under Table 1); BC-GNJ's setting gave 127x "
                       "at 1.02 %",
    ("lenet5", "turbo"): "prior defaults chosen after exploratory runs scored on the test set "
                         "(benchmarks/results/turbo_exploration.json)",
    ("lenet300", "turbo"): "recipe (a wider slab) chosen after the default gave 1.85 % test error; exploratory "
                           "runs scored on the test set (benchmarks/results/turbo_exploration.json)",
}


def _mark(model: str, method: str) -> str:
    return f"{method} {TEST_SET_MARK}" if (model, method) in CHOSEN_ON_TEST else method


def mark_table_rows(markdown: str) -> str:
    """Append the test-set mark to the method cell of rows ``| model | method | ...`` listed in CHOSEN_ON_TEST."""
    def one(match: re.Match) -> str:
        return f"| {match['model']} | {_mark(match['model'], match['method'])} |"
    return re.sub(r"^\| (?P<model>[\w-]+) \| (?P<method>\w+) \|", one, markdown, flags=re.M)


def chosen_on_test_note(runs: list[dict] = ()) -> list[str]:
    """The † list; where a blind rerun of the row is committed (``benchmarks/blind_row.py``), its figures follow,
    then those of its tagged variants (the recipe with one setting changed, chosen on validation by the same rule)."""
    blind, variants = blind_reruns(runs), blind_variants(runs)
    lines = [f"{TEST_SET_MARK} Settings chosen after reading test-set figures (not a blind choice):", ""]
    for (model, method), why in CHOSEN_ON_TEST.items():
        group = blind.get((model, method))
        tail = ""
        if group:
            rerun = group[0]
            tail = (f"; rerun blind with {rerun['epochs']} epochs: {seed_spread_text([rerun])} "
                    f"(`{rerun['_stem']}`)")
            if len(group) > 1:
                tail += f"; {seed_spread_text(group)}"
        for (v_model, v_method, tag), tagged in sorted(variants.items()):
            if (v_model, v_method) == (model, method):
                tail += (f"; variant `{tag}` rerun blind with {tagged[0]['epochs']} epochs: "
                         f"{seed_spread_text(tagged)} (`{tagged[0]['_stem']}`)")
        lines.append(f"- {model} {method}: {why}{tail}.")
    return lines + [""]


def _before(r: dict) -> str:
    """The pruned model's test error before fine-tuning and what the fine-tuning did: kept, or undone by the
    validation guard (the model reported is then the pruned one)."""
    value = r.get("test_error_pct_pruned_before_finetune")
    if value is None:
        return ""
    how = " distilled" if r.get("finetune_distill") else ""
    if finetune_undone(r):
        return f"{value:.2f} ({r.get('finetune_epochs')} ep. of fine-tuning undone: validation error rose) → "
    return f"{value:.2f} (fine-tuned{how} {r.get('finetune_epochs')} ep.) → "


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


def cost_section(records: list[dict]) -> list[str]:
    """Training cost per epoch: the older records as a table, the newer ones as their own markdown."""
    lines = []
    old = [r for r in records if "results" not in r]
    if old:
        lines += ["Training cost per epoch (CPU, 2 threads):", "",
                  "| model | plain epoch (s) | BC-GNJ epoch (s) | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['plain_epoch_s_median']:.2f} | {r['bayes_epoch_s_median']:.2f} | "
                  f"{r['ratio']:.2f}x |" for r in old] + [""]
    tables = [RESULTS / f"{r['_stem']}.md" for r in records if "results" in r]
    tables = [md for md in tables if md.exists()]
    if tables:
        lines += ["## Training cost per epoch", ""]
        lines += [part for md in tables for part in (md.read_text(), "")]
    return lines


#: Where a record says a GPU did its work: its device, hardware or training notes name CUDA or an NVIDIA card.
_GPU_WORDS = re.compile(r"\bcuda\b|nvidia|\bh100\b|\bh200\b", re.IGNORECASE)
_WHERE_FIELDS = ("device", "hardware", "trained_on", "what")


def gpu_records(results: Path | None = None) -> list[str]:
    """Stems of the committed records whose figures came, in whole or in part, from a GPU (their own fields say so)."""
    stems = []
    for path in sorted((results or RESULTS).glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and any(_GPU_WORDS.search(str(record.get(k, ""))) for k in _WHERE_FIELDS):
            stems.append(path.stem)
    return stems


def header(results: Path | None = None) -> list[str]:
    """RESULTS.md's opening: how it is made, where its figures were measured, how to check a row."""
    gpu = gpu_records(results)
    where = ("All figures were measured on a 2-core CPU machine" + (
        ", except what the records " + ", ".join(f"`{s}`" for s in gpu) + " say ran on a GPU (an NVIDIA H200: "
        "training, or the epoch times of GPU runs), and the rows built from them" if gpu
        else " (no GPU was lent to the sessions that produced them)"))
    return [
        "# Results",
        "",
        "<!-- Generated file: do not edit. -->",
        "This file is generated by `python -m benchmarks.make_tables` (or `make tables`) from the committed "
        "`benchmarks/results/*.json` and `*.md`; edit the generator, not this file, and rerun it after any benchmark.",
        "",
        where + "; each compressed model sits beside its JSON as `benchmarks/results/<model>_<data>_<method>.bcz`: "
        "load it with `bayescomp.load` and evaluate it on the test set to check a row. Commands are shown as "
        "`python -m benchmarks.<script> ...`, run from the repository root (older records wrote the same command as "
        "`python benchmarks/<script>.py ...`). Methods are described in [docs/methods.md](docs/methods.md), known "
        "limits in [docs/limits.md](docs/limits.md).",
        "",
    ]


def _command(command: str) -> str:
    """A recorded command in today's form (scripts run as modules of the ``benchmarks`` package)."""
    return re.sub(r"python benchmarks/(\w+)\.py", r"python -m benchmarks.\1", command)


def load_runs() -> tuple[list[dict], list[dict]]:
    """Published run records (one per compressed file) and epoch-cost records, in table order."""
    runs, costs = [], []
    for path in sorted(RESULTS.glob("*.json")):
        if path.name.startswith(("table1", "turbo_module_b", "turbo_exploration", "latency_compare", "cnn1-", "onnx_",
                                 "ddp_")) or "_hyper" in path.name:
            continue
        record = json.loads(path.read_text())
        if path.name.startswith("epoch_cost_"):
            record["_stem"] = path.stem
            costs.append(record)
        elif {"model", "method", "test_error_pct", "compression_architecture"} <= record.keys():  # a published run
            record["_stem"] = path.stem
            runs.append(record)
    order = {"lenet300": 0, "lenet5": 1, "vgg16": 2, "resnet20": 3, "resnet56": 4}
    runs.sort(key=lambda r: (order.get(r["model"], 9), r["method"]))
    return runs, costs


def mnist_sections() -> list[str]:
    """Table 1 (every method on MNIST), support plots, head-to-head latency and Turbo-VBI's module-B cost."""
    parts: list[str] = []
    if (RESULTS / "table1.md").exists():
        parts += ["## Table 1: every method on MNIST, measured the same way", "",
                  "From `benchmarks/results/table1.md` (`python -m benchmarks.table1`). Non-zero weights, CSR and "
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
        parts += ["Head-to-head latency (`python -m benchmarks.latency_compare`):", "", compare.read_text(), ""]
    turbo_cost = RESULTS / "turbo_module_b_lenet5_mnist.md"
    if turbo_cost.exists():
        parts += ["Turbo-VBI module B against a training epoch (`python -m benchmarks.turbo_module_b`):", "",
                  turbo_cost.read_text(), ""]
    return parts


def build() -> str:
    """The whole of RESULTS.md."""
    runs, costs = load_runs()
    parts = header()
    if runs or costs:
        parts += ["## Acceptance targets", "", "Targets of the foundation issue, the Table 1 issue, the Turbo-VBI "
                  "issue, the paper-claims issue (the published Table 1 figures) and the real-network issue "
                  "(ResNet-20), checked against the committed "
                  "figures:", "", acceptance_table(runs, costs), ""]
    parts += chosen_on_test_note(runs)
    parts += mnist_sections() + self_compression_section() + hyper_section() + cifar_section(runs)
    parts += onnx_section() + ddp_section()
    parts += other_sections({r["_stem"] for r in runs})
    if runs:
        parts += ["## Every run in detail", "", compression_table(runs), ""]
        parts += ["Commands: " + "; ".join(f"`{r['command']}`" for r in runs) + "", ""]
    parts += cost_section(costs)
    variants = [json.loads(p.read_text()) for p in sorted((RESULTS / "variants").glob("*.json"))]
    if variants:
        parts += ["## Post-training settings tried on the BC-GNJ posteriors", "",
                  "Other post-training settings tried on the same trained posteriors (`benchmarks/results/variants/`); "
                  "the tolerance was raised step by step after looking at these test figures, so the headline rows "
                  f"are not a blind choice (marked {TEST_SET_MARK}):", "", variants_table(variants), ""]
    text = "\n".join(parts)
    text = re.sub(r"`python benchmarks/\w+\.py[^`]*`", lambda m: _command(m.group(0)), text)
    return mark_table_rows(text).rstrip("\n") + "\n"


#: What each method prunes and its paper, for the README's headline table (the figures come from the results).
ABOUT = {
    "gnj": ("neurons / filters (group normal-Jeffreys prior)", "Louizos, Ullrich, Welling, NIPS 2017"),
    "ghs": ("neurons / filters (group horseshoe prior)", "same paper; no public code, ours is a reconstruction"),
    "svd": ("single weights, stored sparse", "Molchanov, Ashukha, Vetrov, ICML 2017"),
    "turbo": ("clustered single weights and neurons, stored sparse", "Xia, Tsang, Lau, IEEE TSP 2023"),
    "self": ("kernels / units by posterior-mean norm, with retraining", "Carannante et al., MLSP 2020"),
    "magnitude": ("single weights by size, with fine-tuning (non-Bayesian)", "Han et al. 2015; Zhu & Gupta 2017"),
}


def headline_table() -> str:
    """One row per method for the README: LeNet-5-Caffe on MNIST from Table 1, the hypernetwork's median."""
    table1 = json.loads((RESULTS / "table1.json").read_text())
    rows = [r for r in table1["rows"] if r["model"] == "lenet5"]
    dense = json.loads((RESULTS / "lenet5_mnist_gnj.json").read_text())
    lines = [f"LeNet-5-Caffe on MNIST (dense: {dense['dense_test_error_pct']:.2f} % test error, "
             f"{dense['weights_dense']:,} weights), from "
             "[RESULTS.md](RESULTS.md) Table 1; × storage = float32 bits of the dense model / float32 bits of the "
             "compressed layers (each dense or CSR, whichever is smaller); × file = float32 `state_dict` bytes / "
             "packed file bytes (bit widths included); speed-up = dense / compressed CPU latency at batch 256.", "",
             "| `--method` | what it prunes | paper | test error | × storage | × file | speed-up b256 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = f" {TEST_SET_MARK}" if ("lenet5", r["method"]) in CHOSEN_ON_TEST else ""
        prunes, paper = ABOUT.get(r["method"], ("–", "–"))
        lines.append(f"| `{r['method']}`{mark} | {prunes} | {paper} | "
                     f"{r['test_error_pct']:.2f} % | {r['compression_storage_f32']:.0f}x | "
                     f"{r['compression_file']:.0f}x | {r['latency_ms']['speedup']['batch_256']:.1f}x |")
    hyper = RESULTS / "lenet5_mnist_hyper.json"
    if hyper.exists():
        record = json.loads(hyper.read_text())
        s = record["summary"]
        lines += ["", f"`bayescomp hyper` (conditional compression: one Bayesian hypernetwork maps a set of classes "
                  f"and a compute budget to a compressed network; Nguyen et al., ECML-PKDD 2021; trained with "
                  f"{hyper_options_text(record)}): over "
                  f"{s['contexts']} random contexts of 2-5 classes at full budget, median {s['median_test_error_pct']:.2f} % "
                  f"error on the context's classes with {s['median_weights_kept']:,.0f} weights, generated in "
                  f"{s['median_generate_ms']:.1f} ms (BC-GNJ retrained per context: median {s['median_retrain_s']:.0f} s over "
                  f"{s['retrained_contexts']} contexts)." + _equal_error_sentence() + _hyper_bits_sentence()]
    blind = blind_sentence(load_runs()[0])
    return "\n".join(lines + ([""] + [blind] if blind else [])
                     + ["", f"{TEST_SET_MARK} setting chosen after reading test-set figures; see RESULTS.md."])


def blind_sentence(runs: list[dict]) -> str:
    """The blind reruns (settings chosen on validation only, ``benchmarks/blind_row.py``) in one README sentence,
    with the seed spread where there are several seeds; empty when none is committed."""
    parts = [f"{model} {method} {group[0]['epochs']} epochs: {seed_spread_text(group)}"
             for (model, method), group in sorted(blind_reruns(runs).items())]
    variants = [f"{model} {method} `{tag}` {group[0]['epochs']} epochs: {seed_spread_text(group)}" + _bits_text(group)
                for (model, method, tag), group in sorted(blind_variants(runs).items())]
    if not parts and not variants:
        return ""
    return ("Rerun with the settings chosen on the validation split by a rule fixed before the run "
            "(`benchmarks/blind_row.py`: the search tolerance, and the prior where variants were given), test error at "
            "architecture compression"
            + (" (non-zero where marked)" if any(" non-zero" in part for part in parts + variants) else "")
            + ": " + "; ".join(parts + ([f"tagged variants (a changed recipe or rule, not the row's rerun): "
                                        f"{'; '.join(variants)}"] if variants else [])) + ".")


def _bits_text(group: list[dict]) -> str:
    """``, bits 370 ± 12x (bit reduction chosen on validation)`` for a variant whose bits rule chose the bits."""
    if "selection_bits_reduce" not in group[0]:
        return ""
    mean, spread = seed_mean_std(group, "compression_bits")
    return (f", bits {mean:.0f}" + (f" ± {spread:.0f}" if len(group) > 1 else "")
            + "x (bit reduction chosen on validation)")


def _equal_error_sentence() -> str:
    """The headline compressor against the unconditional model cut to the same validation error, per data set,
    counted in weights and (where recorded) with bits; or nothing where it was not run."""
    parts, bits = [], []
    for data, name in (("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")):
        record = headline_equal_error(data, RESULTS)
        if record is None:
            continue
        s = record["summary"]
        parts.append(f"{s['contexts_generated_no_larger']} of {s['contexts']} contexts on {name}")
        if "contexts_generated_no_larger_with_bits" in s and "hypernetwork_sha256" in record:
            bits.append(f"{s['contexts_generated_no_larger_with_bits']} of {s['contexts']} on {name} (median "
                        f"{s['median_generated_compression_bits']:.0f}x against "
                        f"{s.get('median_unconditional_compression_bits', float('nan')):.0f}x)")
    if not parts:
        return ""
    return (" Against an unconditional BC-GNJ model trained for the same epochs and cut to the same validation error, "
            f"the generated network is no larger in {' and '.join(parts)}"
            + (f"; counted with the bit widths of both, in {' and '.join(bits)}" if bits else "") + ".")


def _hyper_bits_sentence() -> str:
    """The generated networks' compression with bit widths (``benchmarks/hyper_bits.py`` on the committed
    compressor, MNIST) while the headline is that compressor; or nothing."""
    path = RESULTS / "hyper_bits_lenet5_mnist.json"
    headline = json.loads((RESULTS / "lenet5_mnist_hyper.json").read_text())
    if not path.exists() or "sha256" in headline["hypernetwork"]:  # hyper_bits counted the earlier compressor
        return ""
    s = json.loads(path.read_text())["summary"]
    return (f" With the bit widths their scales' variance allows, the generated networks reach "
            f"{s['median_compression_bits']:.0f}x (the unconditional model cut to the context, its own bits: "
            f"{s['median_unconditional_compression_bits']:.0f}x).")


def readme_with_headline(text: str) -> str | None:
    """``text`` (the README) with its headline block regenerated; ``None`` if the markers are missing."""
    if HEADLINE_START not in text or HEADLINE_END not in text:
        return None
    head, rest = text.split(HEADLINE_START, 1)
    tail = rest.split(HEADLINE_END, 1)[1]
    return f"{head}{HEADLINE_START}\n{headline_table()}\n{HEADLINE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if RESULTS.md or the README's headline table is out of date")
    args = parser.parse_args(argv)
    results, readme = build(), README.read_text()
    new_readme = readme_with_headline(readme)
    if new_readme is None:
        print(f"README.md has no {HEADLINE_START} ... {HEADLINE_END} block: headline table not written")
        new_readme = readme
    if args.check:
        stale = [name for name, old, new in (("RESULTS.md", OUTPUT.read_text() if OUTPUT.exists() else "", results),
                                             ("README.md", readme, new_readme)) if old != new]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python -m benchmarks.make_tables")
        return 1 if stale else 0
    OUTPUT.write_text(results)
    README.write_text(new_readme)
    print(f"RESULTS.md and the README's headline table written from {RESULTS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
