"""Helpers shared by the benchmark scripts: the result-file contract, the reproducing command, publishing a run.

Kept free of ``benchmarks.*`` imports so that scripts still run as files (``python benchmarks/epoch_cost.py``)
as well as modules (``python -m benchmarks.table1``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CONTRACT = [
    "model", "data", "method", "seed", "test_error_pct", "test_error_pct_pruned", "test_error_pct_bayes",
    "dense_test_error_pct", "architecture_dense", "kept_architecture", "weights_dense", "weights_kept",
    "kept_weight_fraction", "compression_architecture", "compression_bits", "compression_file",
    "file_bytes_dense", "file_bytes_compressed", "bits_per_layer", "significand_bits_per_layer", "exponent_bits",
    "thresholds", "flops_dense", "flops_compressed", "flops_compressed_nonzero", "latency_ms",
    "weights_nonzero", "compression_nonzero", "compression_csr", "compression_csr_bits", "epochs", "dense_epochs", "epoch_s_mean",
    "finetune_epochs", "test_error_pct_pruned_before_finetune", "wall_time_s", "command", "git_commit", "device", "torch_threads", "config", "tradeoff_curve", "search_path",
    "dense_block_share", "nonzero_blocks", "blocks_per_nonzero", "mean_row_run", "neurons_removed", "regularity",
    "block_format", "module_b_sweep_s", "epoch_s", "calibration", "compression_path", "coupled_groups", "training", "ddp",
]


def this_command() -> str:
    """The command line that reproduces this run, as ``python -m benchmarks.<script> ...`` from the repository root."""
    return "python -m " + " ".join(shlex.quote(a) for a in [f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]])


def publish(report: dict, run_dir: Path, extra: dict | None = None, suffix: str = "") -> Path:
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
