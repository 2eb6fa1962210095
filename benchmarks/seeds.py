"""Seed spread of the committed Table 1 rows: each committed run's recipe, rerun with other seeds.

For every ``benchmarks/results/<model>_<data>_<method>.json`` asked for, the run's own record (its ``config``: the
exact settings it ran with) is rerun with each extra seed (the seed of the data split, dense pre-training, the
Bayesian and fine-tuning phases and the posterior noise); nothing else changes, and no setting is chosen here, so
the test set is read once per run, for the figure. Seed 0 is the committed run itself. Writes
``benchmarks/results/seeds_<model>_<data>.{json,md}``: every run, and mean and sample standard deviation per
method. A (method, seed) already in the JSON is not rerun (an interrupted study resumes).

    OMP_NUM_THREADS=1 python -m benchmarks.seeds --model lenet300 --methods gnj ghs svd turbo magnitude self \
        --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from benchmarks._common import RESULTS, this_command
from bayescomp.pipeline import RunConfig, git_commit, run

FIELDS = ("test_error_pct", "compression_architecture", "compression_bits", "kept_architecture",
          "dense_test_error_pct", "wall_time_s")


def with_seed(config: dict, seed: int) -> dict:
    """The committed run's settings with every seed replaced by ``seed``."""
    out = json.loads(json.dumps(config))
    out["seed"] = seed
    for phase in ("dense", "bayes", "finetune"):
        if isinstance(out.get(phase), dict):
            out[phase]["seed"] = seed
    out["latency"], out["plots"] = False, False
    return out


def row(report: dict, method: str, seed: int, source: str) -> dict:
    return {"method": method, "seed": seed, "source": source, **{k: report.get(k) for k in FIELDS},
            "compression_nonzero": report.get("compression_nonzero")}


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per method: n, and mean / sample std of test error and compression over its seeds."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {"n": len(mine), "seeds": [r["seed"] for r in mine]}
        for key in ("test_error_pct", "compression_architecture", "compression_bits"):
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            entry[key] = {"mean": statistics.fmean(values) if values else None,
                          "std": statistics.stdev(values) if len(values) > 1 else None}
        out[method] = entry
    return out


def markdown(model: str, data: str, rows: list[dict], stats: dict[str, dict]) -> str:
    def fmt(entry: dict, digits: int, suffix: str = "") -> str:
        if entry["mean"] is None:
            return "-"
        spread = f" ± {entry['std']:.{digits}f}" if entry["std"] is not None else ""
        return f"{entry['mean']:.{digits}f}{spread}{suffix}"

    lines = [f"Seed spread of the committed {model}/{data} rows: each run's recorded settings, rerun with other "
             "seeds (seed 0 = the committed run). Mean ± sample standard deviation.", "",
             "| method | seeds | test error % | compression (architecture) | compression (bits) |",
             "|---|---|---|---|---|"]
    for method, entry in stats.items():
        lines.append(f"| {method} | {', '.join(str(s) for s in entry['seeds'])} | {fmt(entry['test_error_pct'], 2)} | "
                     f"{fmt(entry['compression_architecture'], 1, 'x')} | {fmt(entry['compression_bits'], 1, 'x')} |")
    lines += ["", "| method | seed | test error % | compression (architecture) | kept | dense error % |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['test_error_pct']:.2f} | "
                     f"{r['compression_architecture']:.1f}x | {r['kept_architecture']} | "
                     f"{r['dense_test_error_pct']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--methods", nargs="+", default=["gnj", "ghs", "svd", "turbo", "magnitude", "self"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--run-root", default="runs/seeds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stem = f"seeds_{args.model}_{args.data}"
    path = RESULTS / f"{stem}.json"
    rows: list[dict] = json.loads(path.read_text())["runs"] if path.exists() else []
    done = {(r["method"], r["seed"]) for r in rows}
    for method in args.methods:
        committed = RESULTS / f"{args.model}_{args.data}_{method}.json"
        record = json.loads(committed.read_text())
        if (method, record["seed"]) not in done:
            rows.append(row(record, method, record["seed"], committed.name))
        for seed in args.seeds:
            if (method, seed) in done:
                continue
            config = RunConfig.from_dict(with_seed(record["config"], seed))
            report = run(config, Path(args.run_root) / f"{args.model}_{method}_{seed}", log=lambda *_: None,
                         progress=False)
            rows.append(row(report, method, seed, "rerun"))
            print(json.dumps(rows[-1]), flush=True)
            _write(path, stem, args, rows)
    _write(path, stem, args, rows)


def _write(path: Path, stem: str, args: argparse.Namespace, rows: list[dict]) -> None:
    """Write the record, merged with what the file holds now: two processes running other seeds of the same model
    (one per core) must not drop each other's rows. This process's rows win for the same (method, seed)."""
    merged = {(r["method"], r["seed"]): r for r in (json.loads(path.read_text())["runs"] if path.exists() else [])}
    merged.update({(r["method"], r["seed"]): r for r in rows})
    rows = sorted(merged.values(), key=lambda r: (args.methods.index(r["method"]) if r["method"] in args.methods else 99,
                                       r["seed"]))
    stats = summary(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": args.model, "data": args.data, "command": this_command(),
                                "git_commit": git_commit(), "summary": stats, "runs": rows}, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(args.model, args.data, rows, stats))


if __name__ == "__main__":
    main()
