"""Turbo-VBI with the neuron level of module B against the committed BC-GNJ (and Turbo, Sparse VD) models.

Issue 20 item 4. The neuron level (``TurboVBIConfig.neuron_support``: one support variable per output neuron or
filter, hard-coupled to its row of weight supports, on with prior probability ``p_neuron``) is our
reconstruction of the paper's neuron-level structure; the paper's text could not be read here (UNVERIFIED).

Protocol (fixed before any test figure was read): for each candidate ``p_neuron`` the run uses the committed
Turbo recipe of ``benchmarks/table1.py`` (30 Bayesian epochs, posterior-support pruning, 10 fine-tuning epochs)
plus the neuron level. The chosen candidate is the one with the most non-zero compression among those whose
final (fine-tuned, quantised) model has validation error <= the target (LeNet-5 1.0 %, LeNet-300-100 1.8 %);
if none qualifies, the lowest validation error. Only then are test error and latency reported. Latency is
measured interleaved (every round times every model once, rotating order), CPU float32, batch 1 and 256, one
thread and the machine's thread count, against the committed ``benchmarks/results/<model>_mnist_<m>.bcz``.

    OMP_NUM_THREADS=1 python -m benchmarks.turbo_neuron --model lenet5 --p-neuron 0.1 --train-only
    OMP_NUM_THREADS=1 python -m benchmarks.turbo_neuron --model lenet5 --p-neuron 0.1 0.01 --rounds 9

Writes ``benchmarks/results/turbo_neuron_<model>_mnist.{json,md}`` and the chosen model as ``.bcz``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import bayescomp
from bayescomp.data import DATASETS, load_dataset
from bayescomp.measure import measure_latency
from bayescomp.pipeline import git_commit
from bayescomp.train import evaluate
from benchmarks._common import RESULTS, this_command
from benchmarks.table1 import build_config, run_or_reuse

TARGET_PCT = {"lenet5": 1.0, "lenet300": 1.8}
REFERENCES = ("gnj", "turbo", "svd")  # committed models compared against
SETTINGS = {"batch_1": (1, None, 300), "batch_256": (256, None, 20), "batch_1_1thread": (1, 1, 300),
            "batch_256_1thread": (256, 1, 20)}
COLUMNS = ("test_error_pct", "kept_architecture", "weights_nonzero", "compression_nonzero", "compression_file",
           "dense_block_share", "mean_row_run", "blocks_per_nonzero")


#: a candidate: (p_neuron, neuron_cost); CONTROL is the same schedule without the neuron level
Candidate = tuple[float | None, float]
CONTROL: Candidate = (None, 0.0)


#: the label prefix of a neuron cost, by what it is charged per (``TurboVBIConfig.neuron_cost_per``)
COST_PREFIX = {"weight": "cost", "mac": "mac"}
COST_UNIT_WORDS = {"weight": "nats per weight", "mac": "nats per MAC"}


@dataclass(frozen=True)
class Pricing:
    """How every candidate's neuron cost is charged: per ``cost_per`` unit (``TurboVBIConfig.neuron_cost_per``),
    raised linearly over ``warmup`` epochs (0: from the start), the neurons hearing ``evidence`` besides their
    prior (``TurboVBIConfig.neuron_evidence``). The defaults are the level's own and add nothing to a label."""

    cost_per: str = "weight"
    warmup: int = 0
    evidence: str = "weights"

    def label_suffix(self, cost: float) -> str:
        ramp = f"_ramp{self.warmup}" if cost and self.warmup else ""
        return ramp + ("_fisher" if self.evidence == "fisher" else "")

    def prior_settings(self, candidate: Candidate) -> dict:
        """The TurboVBIConfig settings this pricing adds for ``candidate`` (only those that differ from the
        defaults, so a run's config, and with it its reuse, does not change where the pricing does not)."""
        p_neuron, cost = candidate
        settings: dict = {}
        if cost:
            settings["neuron_cost"] = cost
            if self.cost_per != "weight":
                settings["neuron_cost_per"] = self.cost_per
            if self.warmup:
                settings["neuron_cost_warmup_epochs"] = self.warmup
        if p_neuron is not None and self.evidence != "weights":
            settings["neuron_evidence"] = self.evidence
        return settings


DEFAULT_PRICING = Pricing()


def candidate_label(candidate: Candidate, pricing: Pricing = DEFAULT_PRICING) -> str:
    p_neuron, cost = candidate
    if p_neuron is None:
        return "plain"
    return (f"p{p_neuron:g}" + (f"_{COST_PREFIX[pricing.cost_per]}{cost:g}" if cost else "")
            + pricing.label_suffix(cost))


def candidate_dir(run_root: Path, model: str, candidate: Candidate, pricing: Pricing = DEFAULT_PRICING) -> Path:
    label = candidate_label(candidate, pricing)
    return run_root / (f"{model}_mnist_turbo_{label}" if label == "plain" else f"{model}_mnist_turbo_neuron_{label}")


def train_candidate(model: str, candidate: Candidate, run_root: Path, restart: bool, epochs: int | None = None,
                    finetune_epochs: int | None = None, pricing: Pricing = DEFAULT_PRICING) -> dict:
    """The committed Turbo recipe plus the neuron level with prior ``p_neuron`` and ``neuron_cost`` charged as
    ``pricing`` says (p_neuron None: without the level, the control), optionally with fewer Bayesian / fine-tuning
    epochs (run, or reuse if finished)."""
    p_neuron, _ = candidate
    config = build_config(model, "turbo")
    config.prior = {**config.prior, "neuron_support": p_neuron is not None, "p_neuron": p_neuron or 0.1,
                    **pricing.prior_settings(candidate)}
    if epochs is not None:
        config.bayes = replace(config.bayes, epochs=epochs)
    if finetune_epochs is not None:
        config.finetune = replace(config.finetune, epochs=finetune_epochs)
    config.__post_init__()  # re-validate the prior dict into a full TurboVBIConfig
    return run_or_reuse(config, candidate_dir(run_root, model, candidate, pricing), restart)


def validation_error(path: Path, model: str) -> float:
    """Validation error (%) of a compressed model file on the run's own validation split (seed 0, 5,000)."""
    data = load_dataset("mnist", val_size=5000, seed=0)
    return evaluate(bayescomp.load(path), data.val)["error_pct"]


def choose(candidates: dict[Candidate, dict], target: float) -> Candidate:
    """The protocol's rule on validation error only (module docstring)."""
    ok = [p for p, c in candidates.items() if c["val_error_pct"] <= target]
    if ok:
        return max(ok, key=lambda p: candidates[p]["compression_nonzero"])
    return min(candidates, key=lambda p: candidates[p]["val_error_pct"])


def interleaved_latency(models: dict[str, torch.nn.Module], rounds: int) -> dict:
    """Median / min / max over rounds of each model's median latency per setting (rotating order per round)."""
    shape, names = DATASETS["mnist"].input_shape, list(models)
    samples = {m: {k: [] for k in SETTINGS} for m in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            for key, (batch, threads, repeats) in SETTINGS.items():
                stats = measure_latency(models[name], shape, batch, repeats=repeats, warmup=10, num_threads=threads)
                samples[name][key].append(stats["median_ms"])
    return {m: {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "samples_ms": v}
                for k, v in per.items()} for m, per in samples.items()}


def conv_filters(architecture: str, model: str) -> list[int]:
    """Filters kept per conv layer (LeNet-5: the first two entries of the kept architecture)."""
    return [int(x) for x in architecture.split("-")[:2]] if model == "lenet5" else []


def result_stem(model: str, tag: str = "") -> str:
    """``turbo_neuron_<model>_mnist`` (+ ``_<tag>``): where a comparison's JSON, markdown and model go."""
    return f"turbo_neuron_{model}_mnist" + (f"_{tag}" if tag else "")


def summarise(model: str, candidates: dict[Candidate, dict], reports: dict, rounds: int, run_root: Path,
              tag: str = "", pricing: Pricing = DEFAULT_PRICING) -> dict:
    """Choose on validation, then test error, compression, filters and interleaved latency of every model."""
    chosen = choose(candidates, TARGET_PCT[model])
    stem = result_stem(model, tag)
    shutil.copyfile(candidate_dir(run_root, model, chosen, pricing) / "compressed.bcz",
                    RESULTS / f"{stem}.bcz")
    rows = {"turbo_neuron": {k: reports[chosen].get(k) for k in COLUMNS}}
    models = {"turbo_neuron": bayescomp.load(RESULTS / f"{stem}.bcz")}
    if CONTROL in reports:  # the control: the same schedule without the neuron level
        rows["turbo_same_schedule"] = {k: reports[CONTROL].get(k) for k in COLUMNS}
        models["turbo_same_schedule"] = bayescomp.load(candidate_dir(run_root, model, CONTROL) / "compressed.bcz")
    for method in REFERENCES:
        record = json.loads((RESULTS / f"{model}_mnist_{method}.json").read_text())
        rows[method] = {k: record.get(k) for k in COLUMNS}
        models[method] = bayescomp.load(RESULTS / record["compressed_file"])
    val = load_dataset("mnist", val_size=5000, seed=0).val
    for name, row in rows.items():
        row["filters_kept"] = conv_filters(row["kept_architecture"], model)
        row["val_error_pct"] = evaluate(models[name], val)["error_pct"]
    latency = interleaved_latency(models, rounds)
    return {
        "model": model, "data": "mnist", "target_error_pct": TARGET_PCT[model], "chosen_p_neuron": chosen[0],
        "chosen_neuron_cost": chosen[1], "neuron_cost_per": pricing.cost_per,
        "neuron_cost_warmup_epochs": pricing.warmup, "neuron_evidence": pricing.evidence,
        "chosen_label": candidate_label(chosen, pricing),
        "rule": "most non-zero compression with validation error <= target; else lowest validation error",
        "candidates": {candidate_label(c, pricing): {"p_neuron": c[0], "neuron_cost": c[1], **v}
                       for c, v in candidates.items()},
        "rows": rows, "latency": latency,
        "rounds": rounds, "threads": torch.get_num_threads(), "device": "cpu", "dtype": "float32",
        "compressed_file": f"{stem}.bcz", "chosen_config": reports[chosen]["config"],
        "bayes_epochs": reports[chosen]["config"]["bayes"]["epochs"],
        "finetune_epochs": reports[chosen]["config"]["finetune"]["epochs"],
        "epoch_s_mean": reports[chosen].get("epoch_s_mean"), "command": this_command(), "git_commit": git_commit(),
    }


def _cell(value, fmt: str) -> str:
    """A formatted number, "x" appended for the compression columns; "-" where a record lacks the field."""
    return "-" if value is None else format(value, fmt) + ("x" if fmt == ".1f" else "")


def _chosen_words(result: dict) -> str:
    cost, words = result.get("chosen_neuron_cost", 0.0), COST_UNIT_WORDS[result.get("neuron_cost_per", "weight")]
    warmup = result.get("neuron_cost_warmup_epochs", 0)
    ramp = f", raised linearly over the first {warmup} epochs" if cost and warmup else ""
    data = (", the neurons also hearing the data's evidence (second-order Taylor with the empirical Fisher, "
            "`neuron_evidence=\"fisher\"`)") if result.get("neuron_evidence") == "fisher" else ""
    return (f"p_neuron = {result['chosen_p_neuron']:g}" + (f", neuron cost {cost:g} {words}{ramp}" if cost else "")
            + data)


def markdown(result: dict) -> str:
    lines = [f"# Turbo-VBI with neuron-level support, {result['model']}/MNIST", "",
             f"Chosen {_chosen_words(result)} by validation only ({result['rule']}; target "
             f"{result['target_error_pct']} %). Schedule: {result['bayes_epochs']} Bayesian + "
             f"{result['finetune_epochs']} fine-tuning epochs. Neuron level: our reconstruction (paper text not "
             "read, UNVERIFIED). gnj, turbo, svd: the committed Table 1 models (their own schedules).", "",
             f"| p_neuron | neuron cost ({COST_UNIT_WORDS[result.get('neuron_cost_per', 'weight')]}) | val error | "
             "test error | kept architecture | non-zero compression |",
             "|---|---|---|---|---|---|"]
    for label, c in result["candidates"].items():
        p = c["p_neuron"] if "p_neuron" in c else float(label)
        cost = c.get("neuron_cost", 0.0)
        lines.append(f"| {p:g} | {cost:g} | {c['val_error_pct']:.2f} % | {c['test_error_pct']:.2f} % | {c['kept_architecture']} | "
                     f"{c['compression_nonzero']:.1f}x |")
    lines += ["", f"Compressed models, CPU float32, latency ms, median over {result['rounds']} interleaved rounds "
              f"(range), {result['threads']} threads unless marked:", "",
              "| model | val error | test error | kept architecture | filters | non-zero compr. | file compr. | "
              "dense 4x4 share | mean row run | " + " | ".join(SETTINGS) + " |",
              "|---|---|---|---|---|---|---|---|---|" + "---|" * len(SETTINGS)]
    for name, row in result["rows"].items():
        lat = result["latency"][name]
        cells = [f"{lat[k]['median_ms']:.3f} ({lat[k]['min_ms']:.3f}-{lat[k]['max_ms']:.3f})" for k in SETTINGS]
        lines.append(f"| {name} | {row['val_error_pct']:.2f} % | {row['test_error_pct']:.2f} % | "
                     f"{row['kept_architecture']} | {row['filters_kept']} | {_cell(row['compression_nonzero'], '.1f')} | "
                     f"{_cell(row['compression_file'], '.1f')} | {_cell(row['dense_block_share'], '.3f')} | "
                     f"{_cell(row['mean_row_run'], '.2f')} | " + " | ".join(cells) + " |")
    lines += ["", "Latency was measured interleaved on a 2-core machine: absolute times depend on what else ran there; "
              "only the comparison within this table is meaningful.", "",
              f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5", choices=sorted(TARGET_PCT))
    parser.add_argument("--p-neuron", type=float, nargs="*", default=[0.01])
    parser.add_argument("--neuron-cost", type=float, nargs="*", default=[0.0],
                        help="neuron costs (nats per --neuron-cost-per unit); every p_neuron is tried with every cost")
    parser.add_argument("--neuron-cost-per", choices=sorted(COST_PREFIX), default="weight",
                        help="charge the neuron cost per weight of the row or per MAC it spends on one example")
    parser.add_argument("--neuron-cost-warmup", type=int, default=0,
                        help="epochs over which the neuron cost rises linearly to its value (0: from the start)")
    parser.add_argument("--neuron-evidence", choices=("weights", "fisher"), default="weights",
                        help="what the neurons hear besides their prior (TurboVBIConfig.neuron_evidence)")
    parser.add_argument("--control", action="store_true", help="also train Turbo without the neuron level")
    parser.add_argument("--epochs", type=int, default=None, help="Bayesian epochs (default: the Table 1 recipe)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="default: the Table 1 recipe")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tag", default="", help="suffix of the result files (keeps an earlier comparison's)")
    parser.add_argument("--run-root", type=Path, default=Path("runs/turbo_neuron"))
    parser.add_argument("--train-only", action="store_true", help="train (or reuse) the candidates and stop")
    parser.add_argument("--restart", action="store_true")
    args = parser.parse_args()
    if any(not 0.0 < p < 1.0 for p in args.p_neuron) or args.rounds < 1:
        parser.error("--p-neuron values must lie in (0, 1) and --rounds must be >= 1")
    if any(not 0.0 <= c < float("inf") for c in args.neuron_cost):
        parser.error("--neuron-cost values must be finite and >= 0")
    if any(v is not None and v < 0 for v in (args.epochs, args.finetune_epochs, args.neuron_cost_warmup)):
        parser.error("--epochs, --finetune-epochs and --neuron-cost-warmup must be >= 0")
    tried = [(p, cost) for p in args.p_neuron for cost in args.neuron_cost]
    wanted = tried + ([CONTROL] if args.control else [])
    pricing = Pricing(args.neuron_cost_per, args.neuron_cost_warmup, args.neuron_evidence)
    reports = {c: train_candidate(args.model, c, args.run_root, args.restart, args.epochs, args.finetune_epochs,
                                  pricing) for c in wanted}
    if args.train_only or not tried:
        return
    candidates = {}
    for c in tried:
        path = candidate_dir(args.run_root, args.model, c, pricing) / "compressed.bcz"
        candidates[c] = {"val_error_pct": validation_error(path, args.model),
                         "test_error_pct": reports[c]["test_error_pct"],
                         "kept_architecture": reports[c]["kept_architecture"],
                         "compression_nonzero": reports[c]["compression_nonzero"]}
    result = summarise(args.model, candidates, reports, args.rounds, args.run_root, args.tag, pricing)
    stem = RESULTS / result_stem(args.model, args.tag)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
