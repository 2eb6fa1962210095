"""Is the per-context retrained BC-GNJ baseline of the hypernetwork comparison trained long enough? (issue 20)

``benchmarks/hyper_contexts.py`` retrains BC-GNJ for each context from the cut teacher for ``--retrain-epochs``
(10). This script retrains the first ``--contexts`` of the same seeded contexts twice, with that schedule
(``--short-epochs``) and a longer cosine schedule (``--epochs``, default 20), and compares them. The rule,
fixed before running: the 10-epoch schedule counts as converged if the longer one improves neither the
validation error of the context by more than 0.2 points nor its kept weights by more than 10 %. Only validation
decides; the test error is reported beside it.

    python -m benchmarks.retrain_convergence --data mnist --contexts 2 --epochs 20
    python -m benchmarks.retrain_convergence --data mnist --contexts 2 --short-epochs 20 --epochs 40 \
        --reuse benchmarks/results/retrain_convergence_lenet5_mnist.json

``--reuse FILE`` takes the shorter schedule's figures of a context from an earlier result whose longer schedule
had that many epochs (same seed and contexts), instead of retraining it; the rows say so. ``--context-index I``
runs only the I-th of the planned contexts (0-based), so contexts can train side by side in separate processes;
each writes its own file (``..._ctx<I>``), and the verdict over all contexts is every file's verdict together.

    python -m benchmarks.retrain_convergence --data mnist --contexts 2 --short-epochs 40 --epochs 80 \
        --reuse benchmarks/results/retrain_convergence_lenet5_mnist_20v40.json --context-index 0

Writes ``benchmarks/results/retrain_convergence_lenet5_<data>.{json,md}`` (10 against 20 epochs) or
``retrain_convergence_lenet5_<data>_<short>v<long>.{json,md}`` for other schedules.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bayescomp.hyper import random_contexts
from bayescomp.hyper.pipeline import HyperRunConfig, _run_config, load_run_data
from bayescomp.pipeline import dense_model
from benchmarks._common import RESULTS, this_command
from benchmarks.hyper_contexts import retrain_gnj

#: the rule above, as numbers
MAX_VAL_GAIN_PCT = 0.2
MAX_SIZE_GAIN = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--contexts", type=int, default=2)
    parser.add_argument("--short-epochs", type=int, default=10, help="the schedule hyper_contexts.py used")
    parser.add_argument("--epochs", type=int, default=20, help="the longer schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", default=None, help="earlier result whose longer schedule is this --short-epochs")
    parser.add_argument("--context-index", type=int, default=None,
                        help="run only this one of the planned contexts (0-based; its own result file)")
    args = parser.parse_args()
    if args.context_index is not None and not 0 <= args.context_index < args.contexts:
        parser.error(f"--context-index must lie in [0, {args.contexts}), got {args.context_index}")
    reused = reusable_rows(args)
    started = time.perf_counter()
    config = HyperRunConfig(model="lenet5", data=args.data, seed=args.seed)
    data = load_run_data(config)
    teacher = dense_model(_run_config(config), data, log=lambda *_: None, progress=False)
    contexts = random_contexts(50, data.num_classes, [2, 3, 4, 5], seed=2026 + args.seed)[:args.contexts]
    if args.context_index is not None:
        contexts = contexts[args.context_index:args.context_index + 1]
    rows = []
    for context in contexts:
        classes = list(context.classes)
        short = reused.get(tuple(classes))
        if short is None:
            short = retrain_gnj(teacher, data, context.classes, args.short_epochs, args.seed)
        long = retrain_gnj(teacher, data, context.classes, args.epochs, args.seed)
        rows.append({"classes": classes, "short_epochs": args.short_epochs,
                     "short_test_error_pct": short["retrain_test_error_pct"],
                     "short_weights_kept": short["retrain_weights_kept"],
                     "short_val_error_pct": short["retrain_val_error_pct"], "short_s": short["retrain_s"],
                     "short_reused_from": short.get("reused_from"),
                     "long_epochs": args.epochs, "long_val_error_pct": long["retrain_val_error_pct"],
                     "long_test_error_pct": long["retrain_test_error_pct"],
                     "long_weights_kept": long["retrain_weights_kept"], "long_s": long["retrain_s"]})
        print(json.dumps(rows[-1]), flush=True)
        write(args, rows, started)  # after every context, so a stopped run keeps what it measured


def reusable_rows(args: argparse.Namespace) -> dict[tuple[int, ...], dict]:
    """classes -> the shorter schedule's figures, from ``--reuse``'s rows whose longer schedule had
    ``--short-epochs`` epochs (the same data and seed, checked)."""
    if args.reuse is None:
        return {}
    earlier = json.loads(Path(args.reuse).read_text())
    if earlier.get("data") != args.data or earlier.get("seed", 0) != args.seed:
        raise SystemExit(f"--reuse {args.reuse}: another data set or seed ({earlier.get('data')}, "
                         f"seed {earlier.get('seed', 0)})")
    return {tuple(r["classes"]): {"retrain_test_error_pct": r["long_test_error_pct"],
                                  "retrain_weights_kept": r["long_weights_kept"],
                                  "retrain_val_error_pct": r["long_val_error_pct"], "retrain_s": r["long_s"],
                                  "reused_from": Path(args.reuse).name}
            for r in earlier["rows"] if r["long_epochs"] == args.short_epochs}


def write(args: argparse.Namespace, rows: list[dict], started: float) -> None:
    verdicts = [r["short_val_error_pct"] - r["long_val_error_pct"] <= MAX_VAL_GAIN_PCT
                and r["long_weights_kept"] >= (1 - MAX_SIZE_GAIN) * r["short_weights_kept"] for r in rows]
    index = args.context_index
    record = {"data": args.data, "model": "lenet5", "seed": args.seed, "rows": rows, "converged": all(verdicts),
              "contexts_planned": args.contexts, "context_index": index,
              "rule": f"the longer schedule gains at most {MAX_VAL_GAIN_PCT} points of validation error and at most "
                      f"{100 * MAX_SIZE_GAIN:.0f} % fewer kept weights",
              "command": this_command(), "torch_threads": torch.get_num_threads(),
              "wall_time_s": time.perf_counter() - started}
    stem = f"retrain_convergence_lenet5_{args.data}"
    if (args.short_epochs, args.epochs) != (10, 20):
        stem += f"_{args.short_epochs}v{args.epochs}"
    if index is not None:
        stem += f"_ctx{index}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(record))


def markdown(record: dict) -> str:
    lines = [f"# Hypernetwork baselines: is BC-GNJ retrained per context converged? (LeNet-5, {record['data']})", "",
             f"Rule, fixed before the run: {record['rule']}. Verdict over {len(record['rows'])} of "
             f"{record['contexts_planned']} planned contexts"
             + (f" (this file: context {record['context_index']} only; the others have their own files)"
                if record.get("context_index") is not None else "") + ": "
             f"**{'converged' if record['converged'] else 'not converged'}**.", "",
             "| classes | epochs | val error | test error | weights kept | s | epochs | val error | test error | "
             "weights kept | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {','.join(map(str, r['classes']))} | {r['short_epochs']} | {r['short_val_error_pct']:.2f} % | "
                     f"{r['short_test_error_pct']:.2f} % | {r['short_weights_kept']:,} | {r['short_s']:.0f} | {r['long_epochs']} | "
                     f"{r['long_val_error_pct']:.2f} % | {r['long_test_error_pct']:.2f} % | "
                     f"{r['long_weights_kept']:,} | {r['long_s']:.0f} |")
    reused = sorted({r["short_reused_from"] for r in record["rows"] if r.get("short_reused_from")})
    if reused:
        lines += ["", f"The {record['rows'][0]['short_epochs']}-epoch figures are reused from "
                      f"{', '.join(f'`{name}`' for name in reused)} (that run's longer schedule), not retrained."]
    lines += ["", f"Command: `{record['command']}` ({record['torch_threads']} thread(s), "
                  f"{record['wall_time_s']:.0f} s)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
