"""A Table 1 row rerun blind: its post-training setting chosen on the validation split by a rule fixed here, before
the test set is read (issue 20, items 1 and 2).

The rule, written before the run:

1. Train the committed row's recipe (:func:`recipe`) with ``--epochs`` Bayesian epochs (the
   paper's schedule is 200 for the LeNets) into ``runs/blind/<model>_<method>_<epochs>``.
2. For every search tolerance in ``--tolerances``, prune the posterior with the automatic search on the validation
   split at that tolerance, fine-tune the kept weights with the recipe's fine-tuning (the validation guard included)
   and measure the **validation** error. No test figure is computed here.
3. Keep the candidates whose validation error is at most the dense model's validation error plus ``--allowance``
   points (default 0.2: the paper's own LeNet-300-100 loss, 1.6 % dense to 1.8 % compressed); among them choose the
   one with the largest architecture compression (the smaller tolerance on a tie). If none qualifies, the smallest
   tolerance is taken, and the record says so.
4. Only then run the pipeline once with that tolerance (it reuses the trained posterior), which reads the test set
   for the reported figures, and publish them as ``<model>_mnist_<method>_blind<epochs>.{json,bcz,md}`` with the
   candidates in ``blind_<model>_mnist_<method>_<epochs>.{json,md}``.

    OMP_NUM_THREADS=1 python -m benchmarks.blind_row --model lenet300 --method ghs --epochs 200
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from bayescomp.methods import RunContext, get_method
from bayescomp.methods.runner import guarded_finetune, prepare_and_train
from bayescomp.pipeline import RunConfig, _prepare_run_dir, dense_model, load_data, run
from bayescomp.train import evaluate
from benchmarks._common import RESULTS, publish, this_command
from benchmarks.seeds import with_seed
from benchmarks.table1 import RECIPES, build_config


def recipe(model: str, method: str, seed: int) -> RunConfig:
    """The row's recipe: ``benchmarks/table1.py``'s ``RECIPES`` where it has one, else the settings recorded in the
    committed result (BC-GNJ's rows were made by ``benchmarks/gnj_mnist.py``)."""
    if (model, method) in RECIPES:
        return build_config(model, method, seed)
    committed = RESULTS / f"{model}_mnist_{method}.json"
    if not committed.exists():
        raise SystemExit(f"no recipe for {model} {method}: neither in benchmarks/table1.py nor in {committed}")
    return RunConfig.from_dict(with_seed(json.loads(committed.read_text())["config"], seed))


def candidate(method, ctx: RunContext, posterior: torch.nn.Module, tolerance: float, dense_val: float) -> dict:
    """Prune at ``tolerance`` and fine-tune as the pipeline does; validation figures only."""
    config = replace(ctx.config, compress=replace(ctx.config.compress, tolerance_pct=tolerance))
    trial = replace(ctx, config=config, log=lambda *_: None, run_dir=None)
    result = method.compress(copy.deepcopy(posterior), trial)
    if config.finetune.epochs > 0:
        check = guarded_finetune(result.model, trial)  # as the pipeline does, validation only
        before = check["val_error_pct_before"]
        after = check["val_error_pct_after"] if check["kept"] else before
    else:
        before = after = evaluate(result.model, ctx.data.val)["error_pct"]
    return {"tolerance_pct": tolerance, "kept_architecture": "-".join(map(str, result.architecture_kept)),
            "compression_architecture": result.compression_architecture, "val_error_pct_pruned": before,
            "val_error_pct": after, "qualifies": after <= dense_val + ctx.extras["allowance"] + 1e-9}


def seed_suffix(seed: int) -> str:
    """Seed 0 keeps the original file names; another seed writes beside it (``..._seed1``), never over it."""
    return f"_seed{seed}" if seed else ""


def choose(candidates: list[dict]) -> tuple[dict, bool]:
    """The rule of step 3: the most compressed qualifying candidate, else the smallest tolerance."""
    qualifying = [c for c in candidates if c["qualifies"]]
    if qualifying:
        return max(qualifying, key=lambda c: (c["compression_architecture"], -c["tolerance_pct"])), True
    return min(candidates, key=lambda c: c["tolerance_pct"]), False


def markdown(record: dict) -> str:
    lines = [f"# Blind rerun: {record['model']} {record['method']}, {record['epochs']} Bayesian epochs, "
             f"seed {record.get('seed', 0)}",
             "", f"Command: `{record['command']}` (CPU, {record['torch_threads']} thread(s), "
             f"{record['wall_time_s'] / 60:.0f} min)", "",
             f"Rule (fixed before the run, see `benchmarks/blind_row.py`): among the search tolerances, the largest "
             f"architecture compression whose fine-tuned validation error is at most the dense model's "
             f"({record['dense_val_error_pct']:.2f} %) + {record['allowance_pct']} points. Chosen: tolerance "
             f"{record['chosen']['tolerance_pct']}" + ("" if record["rule_met"] else " (no candidate qualified: the "
                                                         "smallest tolerance)") + ".", "",
             "| tolerance | kept | × architecture | val error pruned % | val error fine-tuned % | qualifies |",
             "|---|---|---|---|---|---|"]
    for c in record["candidates"]:
        lines.append(f"| {c['tolerance_pct']} | {c['kept_architecture']} | {c['compression_architecture']:.1f} | "
                     f"{c['val_error_pct_pruned']:.2f} | {c['val_error_pct']:.2f} | {'yes' if c['qualifies'] else 'no'} |")
    r = record["result"]
    lines += ["", f"Test set, read once for the chosen setting: **{r['test_error_pct']:.2f} % at "
              f"{r['compression_architecture']:.1f}x** (architecture {r['kept_architecture']}, bits "
              f"{r['compression_bits']:.1f}x, non-zero {r['compression_nonzero']:.1f}x); dense "
              f"{r['dense_test_error_pct']:.2f} %. Files: `{record['published']}` and its `.bcz`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--method", default="ghs")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0])
    parser.add_argument("--allowance", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = recipe(args.model, args.method, args.seed)
    config.bayes = replace(config.bayes, epochs=args.epochs)
    config.latency, config.plots = False, False
    seed_tag = seed_suffix(args.seed)
    run_dir = Path("runs/blind") / f"{args.model}_{args.method}_{args.epochs}{seed_tag}"
    _prepare_run_dir(config, run_dir, False, print)
    data = load_data(config)
    dense = dense_model(config, data, print, False)
    dense_val = evaluate(dense, data.val)["error_pct"]
    method = get_method(config.method)
    ctx = RunContext(config=config, data=data, dense=dense, run_dir=run_dir, settings=method.make_settings(config.prior),
                     log=print, progress=False, extras={"allowance": args.allowance})
    posterior = prepare_and_train(method, ctx).model  # resumes from runs/blind/.../bayes.ckpt
    candidates = []
    for tolerance in args.tolerances:
        candidates.append(candidate(method, ctx, posterior, tolerance, dense_val))
        print(json.dumps(candidates[-1]), flush=True)
    chosen, rule_met = choose(candidates)
    final = replace(config, compress=replace(config.compress, tolerance_pct=chosen["tolerance_pct"]))
    report = run(final, run_dir, log=print, progress=False, command=this_command())
    suffix = f"_blind{args.epochs}{seed_tag}"
    published = publish(report, run_dir, {"selection": f"benchmarks/results/blind_{args.model}_mnist_{args.method}_"
                                                       f"{args.epochs}{seed_tag}.json"}, suffix=suffix)
    record = {"model": args.model, "method": args.method, "epochs": args.epochs, "seed": args.seed,
              "dense_val_error_pct": dense_val, "allowance_pct": args.allowance, "candidates": candidates,
              "chosen": chosen, "rule_met": rule_met, "published": str(published.relative_to(RESULTS.parent.parent)),
              "result": {k: report[k] for k in ("test_error_pct", "compression_architecture", "compression_bits",
                                                "compression_nonzero", "kept_architecture", "dense_test_error_pct")},
              "command": this_command(), "torch_threads": torch.get_num_threads(),
              "wall_time_s": time.perf_counter() - started}
    stem = f"blind_{args.model}_mnist_{args.method}_{args.epochs}{seed_tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
