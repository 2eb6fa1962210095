"""Every committed .bcz under benchmarks/results, loaded with today's reader and evaluated on its full test set,
against the test error its report (the .json beside it) recorded.

Checks the packed-format refactor end to end (docs/file-format.md): the files still load, and the models they
hold still give the reported error. Files without a report beside them (the hypernetwork's generated examples)
are loaded and listed without an error to compare. Writes bcz_check.json and bcz_check.md to
benchmarks/results/.

    OMP_NUM_THREADS=1 python benchmarks/bcz_check.py
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

import bayescomp

RESULTS = Path(__file__).resolve().parent / "results"
DATA_NAMES = ("fashion-mnist", "cifar10", "mnist")  # longest first: "fashion-mnist" contains "mnist"


def _data_name(path: Path, report: dict) -> str:
    if isinstance(report.get("data"), str):
        return report["data"]
    return next(name for name in DATA_NAMES if name in str(path.relative_to(RESULTS)))


def check(path: Path, datasets: dict) -> dict:
    """Load one file, evaluate it if its report is beside it, and say whether the error matches."""
    report_path = path.with_suffix(".json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    started = time.perf_counter()
    model = bayescomp.load(path)
    row = {"file": str(path.relative_to(RESULTS)), "class": type(model).__name__,
           "reported_test_error_pct": report.get("test_error_pct")}
    if row["reported_test_error_pct"] is not None:
        name = _data_name(path, report)
        if name not in datasets:
            datasets[name] = bayescomp.load_dataset(name)
        measured = bayescomp.evaluate(model, datasets[name].test)["error_pct"]
        row.update(data=name, measured_test_error_pct=round(measured, 4),
                   matches=abs(measured - row["reported_test_error_pct"]) < 0.005 + 1e-9)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def main() -> None:
    torch.set_num_threads(1)
    datasets: dict = {}
    rows = [check(path, datasets) for path in sorted(RESULTS.rglob("*.bcz"))]
    for row in rows:
        print(row)
    compared = [r for r in rows if "matches" in r]
    summary = {"files": len(rows), "compared": len(compared), "matching": sum(r["matches"] for r in compared),
               "torch": torch.__version__, "torch_threads": 1, "machine": platform.machine(), "rows": rows}
    (RESULTS / "bcz_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["# Committed .bcz files: reported vs measured test error", "",
             f"{summary['files']} files loaded; {summary['compared']} have a report beside them, "
             f"{summary['matching']} of those match its test error (to the report's 0.01 % rounding). "
             "Command: `OMP_NUM_THREADS=1 python benchmarks/bcz_check.py`.", "",
             "| file | model class | data | reported % | measured % | match |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['file']} | {r['class']} | {r.get('data', '')} | "
                     f"{r['reported_test_error_pct'] if r['reported_test_error_pct'] is not None else ''} | "
                     f"{r.get('measured_test_error_pct', '')} | {r.get('matches', 'no report')} |")
    (RESULTS / "bcz_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
