"""Post-training settings tried on a trained Table 1 posterior: search tolerance, fine-tuning, bit summary.

Loads the finished posterior of ``runs/table1/<model>_mnist_<method>`` (made by ``benchmarks/table1.py``),
prunes it with the automatic search at the given tolerance, fine-tunes the kept weights, and measures the test
error of the pruned model and of its quantised versions with the ``max`` and ``mean`` bit summaries. Appends one
record to ``benchmarks/results/table1_variants.json`` (shown under the table). These figures look at the test set,
so any setting adopted from them is disclosed as such in RESULTS.md (rows marked †).

    python -m benchmarks.table1_variants lenet5 ghs --tolerance 2.0 --finetune-epochs 20 --finetune-lr 1e-3
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


from bayescomp.bayesify import bayesify
from bayescomp.checkpoint import load_checkpoint
from bayescomp.compress import compress, prunable_modules, quantize_model
from bayescomp.compress.chain import build_chain
from bayescomp.compress.precision import layer_precisions
from bayescomp.compress.shrink import kept_weight_variances
from bayescomp.pipeline import build_dense, load_data
from bayescomp.priors import deterministic_mode
from bayescomp.train import evaluate, fit
from benchmarks._common import RESULTS, this_command
from benchmarks.table1 import build_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("method")
    parser.add_argument("--tolerance", type=float, required=True)
    parser.add_argument("--finetune-epochs", type=int, required=True)
    parser.add_argument("--finetune-lr", type=float, required=True)
    parser.add_argument("--run-root", default="runs/table1")
    args = parser.parse_args()
    config = build_config(args.model, args.method)
    config.compress = replace(config.compress, tolerance_pct=args.tolerance)
    config.finetune = replace(config.finetune, epochs=args.finetune_epochs, lr=args.finetune_lr)
    data = load_data(config)
    model = bayesify(build_dense(config, data), config.method, config.prior)
    checkpoint = load_checkpoint(Path(args.run_root) / f"{args.model}_mnist_{args.method}" / "bayes.ckpt")
    if checkpoint is None:
        raise SystemExit(f"no posterior in {args.run_root}: run benchmarks/table1.py first")
    model.load_state_dict(checkpoint["model"])
    result = compress(model, data.val, config.compress)
    before = evaluate(result.model, data.test)["error_pct"]
    fit(result.model, data, config.finetune, progress=False, log=lambda *_: None)
    result.model.eval()
    record = {"model": args.model, "method": args.method, "tolerance_pct": args.tolerance,
              "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
              "kept_architecture": result.architecture_kept, "compression_architecture": result.compression_architecture,
              "test_error_pct_before_finetune": before,
              "test_error_pct_pruned": evaluate(result.model, data.test)["error_pct"],
              "val_error_pct_pruned": evaluate(result.model, data.val)["error_pct"], "command": this_command()}
    with deterministic_mode(model):
        variances = kept_weight_variances(build_chain(model), result.plan)
    weights = [m.weight.detach() for m in prunable_modules(result.model)]
    for reduce in ("max", "mean"):
        precisions = layer_precisions(variances, weights, reduce, config.compress.min_bits)
        bits = sum(w.numel() * p.total_bits for w, p in zip(weights, precisions))
        record[f"bits_{reduce}"] = {"bits_per_layer": [p.total_bits for p in precisions],
                                    "compression_bits": 32.0 * result.weights_dense / bits,
                                    "test_error_pct": evaluate(quantize_model(result.model, precisions),
                                                               data.test)["error_pct"]}
    path = RESULTS / "table1_variants.json"
    records = json.loads(path.read_text()) if path.exists() else []
    records.append(record)
    path.write_text(json.dumps(records, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
