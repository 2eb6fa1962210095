"""Exit codes of repeated two-process runs (issue 15, item 8): a run that succeeded must exit 0, every time.

Runs ``bayescomp run --nproc 2`` (torchrun, gloo on CPU) on a tiny schedule ``--repeats`` times, each into a fresh
run directory (the dense model is cached after the first run), and records each run's exit code, wall time,
whether a report was written and whether the output holds an abort at exit ("terminate called", SIGABRT) or a
traceback. Writes benchmarks/results/ddp_exit_codes.json/.md.

    python -m benchmarks.ddp_exit_codes [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS, this_command

TINY = ["--model", "lenet300", "--train-subset", "1000", "--val-size", "500", "--test-subset", "500",
        "--dense-epochs", "1", "--epochs", "1", "--batch-size", "100", "--no-progress", "--no-latency", "--no-plots"]


def one_run(work: Path, index: int) -> dict:
    """One ``bayescomp run --nproc 2``; its exit code and what its output says about how it ended."""
    run_dir = work / f"run{index}"
    env = {**os.environ, "BAYESCOMP_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bayescomp.cli", "run", "--nproc", "2", "--run-dir", str(run_dir),
                           *TINY], env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    return {"run": index, "exit_code": done.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "report_written": (run_dir / "report.json").exists(),
            "abort_at_exit": "terminate called" in output or "SIGABRT" in output,
            "traceback": "Traceback" in output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="bayescomp-ddp-exit-") as tmp:
        runs = []
        for index in range(args.repeats):
            runs.append(one_run(Path(tmp), index))
            print(json.dumps(runs[-1]), flush=True)
    codes = [r["exit_code"] for r in runs]
    result = {"command": this_command(), "nproc": 2, "backend": "gloo (CPU)", "schedule": " ".join(TINY),
              "repeats": len(runs), "exit_codes": codes, "all_zero": all(c == 0 for c in codes),
              "aborts_at_exit": sum(r["abort_at_exit"] for r in runs), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ddp_exit_codes.json").write_text(json.dumps(result, indent=2))
    lines = ["# Exit codes of repeated `bayescomp run --nproc 2` runs", "",
             f"Command: `{result['command']}`; each run: `bayescomp run --nproc 2 {result['schedule']}` "
             "(torchrun, gloo on CPU, fresh run directory, shared dense-model cache).", "",
             f"**{sum(c == 0 for c in codes)} of {len(codes)} runs exited 0**; aborts at exit: "
             f"{result['aborts_at_exit']}.", "",
             "| run | exit code | wall s | report written | abort at exit | traceback |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['exit_code']} | {r['wall_s']} | {r['report_written']} | {r['abort_at_exit']} | "
              f"{r['traceback']} |" for r in runs]
    (RESULTS / "ddp_exit_codes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
