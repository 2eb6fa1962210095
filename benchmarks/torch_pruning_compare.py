"""Torch-Pruning beside bayescomp on the same pretrained ResNet-20/CIFAR-10, at equal MACs and fine-tuning budget.

For every MAC target (by default the compressed MACs of each committed bayescomp ResNet-20 result, plus a few fixed
fractions of the dense MACs for a curve) this prunes a fresh copy of the pretrained model with Torch-Pruning's
``MetaPruner`` (uniform per-layer ratio found by bisection so that the pruned MACs match the target within 1 %),
fine-tunes it with the same optimiser, schedule, augmentation and number of epochs as the bayescomp run, and reports
validation and test error. Only the validation split is used to fit anything; the test set is read once per model.

Importances: ``GroupMagnitudeImportance(p=2)`` (Torch-Pruning's group-norm criterion, its benchmark's default),
``--importance l1`` (per-layer L1) and ``bn`` (batch-norm scale). Usage::

    python benchmarks/torch_pruning_compare.py --finetune-epochs 2 --fractions 0.5 0.35
    python benchmarks/torch_pruning_compare.py --targets-from benchmarks/results/resnet20_cifar10_gnj_pretrained.json

Writes ``benchmarks/results/resnet20_cifar10_torch-pruning.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp

from bayescomp.data import load_dataset
from bayescomp.models import create_model
from bayescomp.train import TrainConfig, evaluate, fit

RESULTS = Path(__file__).resolve().parent / "results"


def macs_and_params(model: torch.nn.Module, example: torch.Tensor) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def importance(name: str):
    if name == "group_norm":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="mean")
    if name == "bn":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"unknown importance {name!r}")


def prune_to_ratio(dense: torch.nn.Module, ratio: float, kind: str, example: torch.Tensor) -> torch.nn.Module:
    model = copy.deepcopy(dense).eval()
    pruner = tp.pruner.MetaPruner(model, example, importance=importance(kind), pruning_ratio=ratio,
                                  ignored_layers=[model.fc], global_pruning=False)
    pruner.step()
    return model


def prune_to_macs(dense: torch.nn.Module, target_macs: int, kind: str, example: torch.Tensor
                  ) -> tuple[torch.nn.Module, float]:
    """Bisect the per-layer channel ratio until the pruned MACs are within 1 % of ``target_macs``."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(20):
        mid = (lo + hi) / 2
        model = prune_to_ratio(dense, mid, kind, example)
        macs, _ = macs_and_params(model, example)
        best = (model, mid)
        if abs(macs - target_macs) <= 0.01 * target_macs:
            break
        lo, hi = (mid, hi) if macs > target_macs else (lo, mid)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets-from", nargs="*", default=[], help="bayescomp result JSONs whose MACs to match")
    parser.add_argument("--fractions", type=float, nargs="*", default=[], help="MAC targets as fractions of dense")
    parser.add_argument("--importance", nargs="+", default=["group_norm"], choices=("group_norm", "l1", "bn"))
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="default: the matched bayescomp run's Bayesian + fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast in fine-tuning")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "resnet20_cifar10_torch-pruning"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_dataset("cifar10")
    dense = create_model("resnet20", data.num_classes, data.input_shape, data.mean, data.std, pretrained=True)
    example = data.val.example(1)
    dense_macs, dense_params = macs_and_params(dense, example)
    dense_test = evaluate(dense, data.test)["error_pct"]

    targets = []
    for path in args.targets_from:
        record = json.loads(Path(path).read_text())
        epochs = args.finetune_epochs if args.finetune_epochs is not None else (
            int(record.get("epochs", 0)) + int(record.get("finetune_epochs", 0)))
        targets.append({"macs": int(record["flops_compressed"]), "epochs": epochs, "matched": Path(path).name})
    for fraction in args.fractions:
        targets.append({"macs": int(fraction * dense_macs), "epochs": args.finetune_epochs or 2, "matched": None})

    rows = []
    for target in targets:
        for kind in args.importance:
            t0 = time.perf_counter()
            model, ratio = prune_to_macs(dense, target["macs"], kind, example)
            macs, params = macs_and_params(model, example)
            before = evaluate(model, data.val)["error_pct"]
            config = TrainConfig(epochs=target["epochs"], lr=args.lr, lr_schedule="cosine", augment="crop_flip")
            fit(model, data, config, progress=False, amp=args.amp, log=lambda *_: None)
            row = {"importance": kind, "matched": target["matched"], "pruning_ratio": round(ratio, 4),
                   "flops_compressed": macs, "params_compressed": params, "mac_ratio": dense_macs / macs,
                   "param_ratio": dense_params / params, "finetune_epochs": target["epochs"],
                   "val_error_before_finetune_pct": before, "val_error_pct": evaluate(model, data.val)["error_pct"],
                   "test_error_pct": evaluate(model, data.test)["error_pct"],
                   "wall_time_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    result = {"model": "resnet20", "data": "cifar10", "method": "torch-pruning", "torch_pruning": tp.__version__,
              "flops_dense": dense_macs, "params_dense": dense_params, "dense_test_error_pct": dense_test,
              "finetune": {"optimizer": "Adam", "lr": args.lr, "schedule": "cosine", "augment": "crop_flip",
                           "amp": args.amp},
              "rows": rows, "wall_time_s": round(time.perf_counter() - started, 1),
              "threads": torch.get_num_threads(),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Torch-Pruning on pretrained ResNet-20/CIFAR-10 (dense {dense_test:.2f} % test error, "
             f"{dense_macs / 1e6:.1f} M MACs)", "", f"Command: `{result['command']}`", "",
             "| importance | matched | MACs | MAC ratio | param ratio | epochs | val err | test err |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['importance']} | {r['matched'] or '-'} | {r['flops_compressed'] / 1e6:.2f} M | "
                     f"{r['mac_ratio']:.2f}x | {r['param_ratio']:.2f}x | {r['finetune_epochs']} | "
                     f"{r['val_error_pct']:.2f} % | {r['test_error_pct']:.2f} % |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
