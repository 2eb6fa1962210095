"""Helpers shared by the benchmark scripts: the result-file contract (drawn from the one report schema), the
reproducing command, publishing a run.

Kept free of ``benchmarks.*`` imports so that scripts still run as files (``python benchmarks/epoch_cost.py``)
as well as modules (``python -m benchmarks.table1``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from bayescomp.report_schema import REPORT_KEYS, Report

RESULTS = Path(__file__).resolve().parent / "results"

#: Report keys left out of the published record: per-epoch history, plots and split sizes stay in the run directory;
#: runtime_latency has its own benchmark (runtime_latency.py).
UNPUBLISHED = frozenset({"val_error_pct_bayes", "layers", "n_train", "n_val", "n_test", "history", "plots",
                         "runtime_latency", "self_compression_rounds", "test_error_pct_density"})
#: The published fields: the report schema (bayescomp.report_schema.Report) less UNPUBLISHED, in schema order.
CONTRACT = [key for key in REPORT_KEYS if key not in UNPUBLISHED]


def budget_label(compress: dict) -> str:
    """``2x MAC budget``, ``3x weight budget`` or ``2x MAC + 3x weight budget`` (``... (weights first)`` when the
    search served one budget first) from a run's compress config; empty when the run searched to an error tolerance
    instead."""
    parts = [f"{compress[key]:g}x {what}" for key, what in (("target_macs", "MAC"), ("target_weights", "weight"))
             if compress.get(key)]
    order = compress.get("budget_order", "joint")  # absent in records written before the option
    served = f" ({order.replace('_', ' ')})" if len(parts) == 2 and order != "joint" else ""
    return f"{' + '.join(parts)} budget{served}" if parts else ""


def _blind_groups(runs: list[dict], tagged: bool) -> dict[tuple, list[dict]]:
    """Blind runs (records with a ``selection``), untagged or tagged, grouped by (model, method[, tag]) in seed
    order."""
    groups: dict[tuple, list[dict]] = {}
    for record in runs:
        tag = record.get("selection_tag")
        if record.get("selection") and bool(tag) == tagged:
            key = (record["model"], record["method"]) + ((tag,) if tagged else ())
            groups.setdefault(key, []).append(record)
    return {key: sorted(group, key=lambda r: r.get("seed", 0)) for key, group in groups.items()}


def blind_reruns(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The blind reruns (``benchmarks/blind_row.py``: records with a ``selection``) by (model, method), each list in
    seed order: seed 0 is the rerun first committed, other seeds (``..._seed1``) give its spread. Tagged variants
    (``--tag``: a changed recipe) are not the row's reruns and are left out."""
    return _blind_groups(runs, tagged=False)


def blind_variants(runs: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The tagged blind runs (``blind_row.py --tag``: the row's recipe with a changed setting, chosen on validation
    by the same rule) by (model, method, tag), each list in seed order."""
    return _blind_groups(runs, tagged=True)


def seed_mean_std(records: list[dict], key: str) -> tuple[float, float]:
    """Mean and sample standard deviation of ``key`` over records (std 0 for a single record)."""
    values = [float(r[key]) for r in records]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var ** 0.5


def seed_spread_text(records: list[dict]) -> str:
    """``1.66 ± 0.04 % at 12.1 ± 0.8x over seeds 0, 1, 2`` (one record: its own figures). The compression is the
    one the blind rule ranked by (``selection_metric``): architecture, or non-zero weights (then said so)."""
    metric = records[0].get("selection_metric", "architecture")
    key, unit = f"compression_{metric}", "x non-zero" if metric == "nonzero" else "x"
    if len(records) == 1:
        return f"{records[0]['test_error_pct']:.2f} % at {records[0][key]:.1f}{unit}"
    error, error_sd = seed_mean_std(records, "test_error_pct")
    comp, comp_sd = seed_mean_std(records, key)
    seeds = ", ".join(str(r.get("seed", 0)) for r in records)
    return f"{error:.2f} ± {error_sd:.2f} % at {comp:.1f} ± {comp_sd:.1f}{unit} over seeds {seeds}"


def finetuned_val_error(record: dict) -> float | None:
    """A result's validation error after its fine-tuning (5,000 images), where the record has it."""
    return (record.get("finetune_validation") or {}).get("val_error_pct_after")


def finetune_undone(record: dict) -> bool:
    """Whether the validation guard undid a result's fine-tuning (its model is then the pruned one)."""
    return not (record.get("finetune_validation") or {}).get("kept", True)


def headline_equal_error(data: str, results: Path = RESULTS) -> dict | None:
    """The equal-validation-error comparison (``benchmarks/hyper_equal_error.py``) of the compressor behind the
    headline (``lenet5_<data>_hyper.json``), matched by the compressor file's SHA-256; before the records carried
    it, the untagged file (the committed compressor against the original unconditional posterior)."""
    headline = results / f"lenet5_{data}_hyper.json"
    digest = json.loads(headline.read_text())["hypernetwork"].get("sha256") if headline.exists() else None
    if digest is not None:
        for path in sorted(results.glob(f"hyper_equal_error_lenet5_{data}*.json")):
            record = json.loads(path.read_text())
            if record.get("hypernetwork_sha256") == digest:
                return record
        return None
    path = results / f"hyper_equal_error_lenet5_{data}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_result(stem: Path, record: dict, markdown: str) -> None:
    """``<stem>.json`` (the record) and ``<stem>.md`` (its write-up) side by side, and the write-up printed."""
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)


def this_command() -> str:
    """The command line that reproduces this run, as ``python -m benchmarks.<script> ...`` from the repository root."""
    return "python -m " + " ".join(shlex.quote(a) for a in [f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]])


def publish(report: Report, run_dir: Path, extra: dict | None = None, suffix: str = "") -> Path:
    """Copy a run's report (contract fields) and compressed model into benchmarks/results/ (``suffix`` names a
    second setting of the same model, data and method)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{report['model']}_{report['data']}_{report['method']}{suffix}"
    record = {k: report[k] for k in CONTRACT if k in report}
    record["compressed_file"] = f"{stem}.bcz"
    record.update(extra or {})
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    shutil.copyfile(run_dir / "compressed.bcz", RESULTS / f"{stem}.bcz")
    (RESULTS / f"{stem}.md").write_text((run_dir / "report.md").read_text())
    plots = RESULTS / "plots"
    plots.mkdir(exist_ok=True)
    for png in (run_dir / "plots").glob("*.png"):
        shutil.copyfile(png, plots / f"{stem}_{png.name}")
    return RESULTS / f"{stem}.json"
