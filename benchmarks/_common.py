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
    """``2x MAC budget``, ``3x weight budget`` or ``2x MAC + 3x weight budget`` from a run's compress config; empty
    when the run searched to an error tolerance instead."""
    parts = [f"{compress[key]:g}x {what}" for key, what in (("target_macs", "MAC"), ("target_weights", "weight"))
             if compress.get(key)]
    return f"{' + '.join(parts)} budget" if parts else ""


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
