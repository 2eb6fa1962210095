"""Accuracy and compression of a training estimator against the paper's, on the full blind recipe (issue 16).

Reads the committed blind reruns of a Table 1 row (``benchmarks/blind_row.py``, every seed: the paper's estimator,
local reparameterisation) and the same row rerun with a changed prior setting under ``--tag`` (e.g.
``weight_sampling=batch``, one weight draw per mini-batch), and writes one table: per seed the test error of the
compressed model, the posterior mean's test error, the kept architecture, the compression and the seconds per
Bayesian epoch, then means ± sample standard deviations and Welch 95 % intervals for the differences (tag minus
row). Nothing is trained here; make the runs first:

    OMP_NUM_THREADS=1 python -m benchmarks.blind_row --model lenet300 --method gnj --epochs 200 \\
        --prior-set weight_sampling=batch --tag wbatch --seed S          # S = 0, 1, 2
    python -m benchmarks.sampling_parity --model lenet300 --method gnj --epochs 200 --tag wbatch
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

from benchmarks._common import RESULTS, this_command

FIELDS = (("test_error_pct", "test error %"), ("test_error_pct_bayes", "posterior-mean error %"),
          ("compression_architecture", "× architecture"), ("compression_bits", "× bits"),
          ("epoch_s_mean", "s / Bayesian epoch"))


def published(model: str, method: str, epochs: int, tag: str) -> list[dict]:
    """The published blind records of one row (``tag`` = "") or one tagged variant, in seed order."""
    stem = f"{model}_mnist_{method}_blind{epochs}" + (f"_{tag}" if tag else "")
    records = []
    for path in sorted(RESULTS.glob(f"{stem}*.json")):
        rest = path.stem[len(stem):]
        if rest and not (rest.startswith("_seed") and rest[5:].isdigit()):
            continue  # another tag's files share the prefix
        records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda r: r.get("seed", 0))


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(b) - mean(a) with its two-sided 95 % Welch interval (nan bounds with fewer than two values each)."""
    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    from scipy.stats import t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t.ppf(0.975, dof) * se
    return diff, diff - half, diff + half


def summary(row: list[dict], variant: list[dict]) -> dict:
    out = {}
    for key, _ in FIELDS:
        a = [float(r[key]) for r in row]
        b = [float(r[key]) for r in variant]
        out[key] = {"row_mean": statistics.fmean(a), "row_sd": statistics.stdev(a) if len(a) > 1 else 0.0,
                    "variant_mean": statistics.fmean(b), "variant_sd": statistics.stdev(b) if len(b) > 1 else 0.0,
                    "difference": dict(zip(("mean", "low", "high"), welch(a, b)))}
    return out


def markdown(record: dict) -> str:
    lines = [f"# {record['model']} {record['method']}: `{record['tag']}` ({record['change']}) against the paper's "
             f"estimator, blind {record['epochs']}-epoch recipe", "",
             f"Command: `{record['command']}`. Each run: `python -m benchmarks.blind_row` (the tolerance chosen on "
             "validation by the rule fixed there; the test set read once). Seconds per epoch are each run's own wall "
             "time on whatever machine and load it had: compare speed in `epoch_cost_*.md`, not here.", "",
             "| estimator | seed | test error % | posterior-mean error % | dense test error % | kept | × architecture "
             "| × bits | s / epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for label, runs in (("paper (local)", record["row"]), (record["tag"], record["variant"])):
        for r in runs:
            lines.append(f"| {label} | {r['seed']} | {r['test_error_pct']:.2f} | {r['test_error_pct_bayes']:.2f} | "
                         f"{r['dense_test_error_pct']:.2f} | {r['kept_architecture']} | {r['compression_architecture']:.1f} | "
                         f"{r['compression_bits']:.1f} | {r['epoch_s_mean']:.2f} |")
    lines += ["", "| quantity | paper (local) | " + record["tag"] + " | difference, 95 % Welch interval |",
              "|---|---|---|---|"]
    for key, label in FIELDS:
        s = record["summary"][key]
        d = s["difference"]
        interval = (f"[{d['low']:+.2f}, {d['high']:+.2f}]" if not math.isnan(d["low"])
                    else "(no interval: one seed on a side)")
        lines.append(f"| {label} | {s['row_mean']:.2f} ± {s['row_sd']:.2f} | {s['variant_mean']:.2f} ± "
                     f"{s['variant_sd']:.2f} | {d['mean']:+.2f} {interval} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--method", default="gnj")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--tag", default="wbatch")
    args = parser.parse_args()
    row = published(args.model, args.method, args.epochs, "")
    variant = published(args.model, args.method, args.epochs, args.tag)
    if not row or not variant:
        raise SystemExit(f"need blind runs of both: {len(row)} of the row, {len(variant)} tagged {args.tag!r}")
    keep = ("seed", "test_error_pct", "test_error_pct_bayes", "dense_test_error_pct", "kept_architecture", "compression_architecture",
            "compression_bits", "epoch_s_mean", "git_commit", "torch_threads")
    changed = {k: v for k, v in variant[0]["config"]["prior"].items() if row[0]["config"]["prior"].get(k) != v}
    record = {"model": args.model, "method": args.method, "epochs": args.epochs, "tag": args.tag,
              "change": ", ".join(f"{k}={v}" for k, v in changed.items()) or "no prior change",
              "row": [{k: r.get(k) for k in keep} for r in row],
              "variant": [{k: r.get(k) for k in keep} for r in variant],
              "summary": summary(row, variant), "command": this_command()}
    stem = f"sampling_parity_{args.model}_mnist_{args.method}_{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
