"""Torch-Pruning beside bayescomp on the same pretrained ResNet-20/CIFAR-10, at equal MACs and fine-tuning budget.

For every MAC target (the MAC reduction of each bayescomp ResNet-20 result given, plus a few fixed fractions of the
dense MACs for a curve) this prunes a fresh copy of the pretrained model with Torch-Pruning's ``MetaPruner`` (uniform
per-layer ratio found by bisection so that the pruned MACs match the target within 1 %), fine-tunes it for as many
epochs as the bayescomp run trained in all (Bayesian + fine-tuning epochs), with crop/flip augmentation and a cosine
schedule, and reports validation and test error. Targets are matched as *ratios* of the dense MACs, because the two
libraries count MACs slightly differently (Torch-Pruning also counts batch-norm and the classifier bias). The
fine-tuning learning rate (``--lr``, Adam 5e-4) was not tuned, for either library. Only the validation split is
used to fit anything; the test set is read once per model.

Each finished row is written at once and a rerun skips rows already measured with the same settings, so an
interrupted comparison resumes. The plot puts both libraries on one axis: Torch-Pruning's fine-tuned rows, each
bayescomp result (fine-tuned) and, where the result records it, bayescomp's curve along one shared threshold
*without* fine-tuning.

Importances: ``GroupMagnitudeImportance(p=2)`` (Torch-Pruning's group-norm criterion, its benchmark's default),
``--importance l1`` (per-layer L1) and ``bn`` (batch-norm scale), and ``posterior``: the channels a trained
bayescomp posterior (``--posterior RUN_DIR``, its ``bayes.ckpt``) ranks as most redundant (group log alpha, one
threshold shared by all coupled groups, the least pruning that meets the MAC target), cut from the *dense*
pretrained weights and fine-tuned with the same recipe. That row separates the two things a Bayesian result mixes:
which channels the posterior picks, and the weights the Bayesian training left behind. ``posterior_uniform`` splits
the channel choice once more: Torch-Pruning's uniform per-layer ratio decides *how many* channels each layer keeps,
the posterior's group log alpha decides *which* (:class:`PosteriorImportance`). ``posterior_snr`` keeps that
uniform ratio and ranks by the posterior's signal-to-noise ratio summed over every weight a channel takes with it
(``CompressConfig(channel_score="snr")``'s statistic, :func:`posterior_snr`). Usage::

    python benchmarks/torch_pruning_compare.py --finetune-epochs 2 --fractions 0.5 0.35
    python benchmarks/torch_pruning_compare.py --targets-from benchmarks/results/resnet20_cifar10_gnj.json --amp

Writes ``benchmarks/results/resnet20_cifar10_torch-pruning.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp

from bayescomp.data import load_dataset
from bayescomp.evaluation import placed
from bayescomp.models import create_model
from bayescomp.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import budget_label, finetuned_val_error, this_command  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def macs_and_params(model: torch.nn.Module, example: torch.Tensor) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


class PosteriorImportance(tp.importance.Importance):
    """Torch-Pruning importance from a bayescomp posterior: a channel scores ``-log alpha`` of its group (high =
    the posterior is sure it carries signal); in a coupled group the most confident member decides, as bayescomp's
    ``graph_reduce="min"`` does. Used with a uniform per-layer ratio it keeps the posterior's ranking *within* each
    layer but Torch-Pruning's allocation *across* layers."""

    def __init__(self, model: torch.nn.Module, scores: dict[str, torch.Tensor]) -> None:
        modules = dict(model.named_modules())
        self.scores = {modules[name]: score for name, score in scores.items()}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        out_fns = (tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_linear_out_channels)
        imp = torch.full((len(group[0].idxs),), float("-inf"))
        for i, (dep, idxs) in enumerate(group):
            if dep.pruning_fn in out_fns and dep.layer in self.scores:
                root = torch.as_tensor(group[i].root_idxs, dtype=torch.long)
                imp.scatter_reduce_(0, root, self.scores[dep.layer][list(idxs)].float(), reduce="amax")
        return None if torch.isinf(imp).all() else imp


def importance(name: str, model: torch.nn.Module, posterior: dict[str, torch.Tensor] | None = None):
    if name == "group_norm":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="mean")
    if name == "bn":
        return tp.importance.BNScaleImportance()
    if name in ("posterior_uniform", "posterior_snr"):
        return PosteriorImportance(model, posterior)
    raise ValueError(f"unknown importance {name!r}")


def prune_to_ratio(dense: torch.nn.Module, ratio: float, kind: str, example: torch.Tensor,
                   posterior: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    model = copy.deepcopy(dense).eval()
    pruner = tp.pruner.MetaPruner(model, example, importance=importance(kind, model, posterior),
                                  pruning_ratio=ratio, ignored_layers=[model.fc], global_pruning=False)
    pruner.step()
    return model


def posterior_scores(dense: torch.nn.Module, run_dir: Path) -> dict[str, torch.Tensor]:
    """``-log alpha`` per output channel of every Bayesian layer of a bayescomp run, by module name."""
    bayes = posterior_from_run(dense, run_dir)
    return {name: -module.group_log_alpha().detach() for name, module in bayes.named_modules()
            if hasattr(module, "group_log_alpha")}


def posterior_snr(dense: torch.nn.Module, run_dir: Path, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per output channel of each coupled group's root layer: the log of the posterior signal-to-noise ratio summed
    over every weight the channel takes with it (bayescomp's ``channel_score="snr"`` statistic, negated so that
    high = keep, as :class:`PosteriorImportance` reads scores)."""
    from bayescomp.compress.structure import GraphStructure

    structure = GraphStructure(posterior_from_run(dense, run_dir), example, "min", channel_score="snr")
    return {group.root: -stat for group, stat in zip(structure.graph.prunable_groups, structure.stats)}


def posterior_from_run(dense: torch.nn.Module, run_dir: Path) -> torch.nn.Module:
    from bayescomp import bayesify
    from bayescomp.checkpoint import load_checkpoint
    from bayescomp.methods import get_method

    record = json.loads((run_dir / "run.json").read_text())
    state = load_checkpoint(run_dir / "bayes.ckpt")
    if state is None:
        raise FileNotFoundError(f"no posterior checkpoint in {run_dir} (bayes.ckpt)")
    settings = get_method(record["method"]).make_settings(record["prior"])
    bayes = bayesify(copy.deepcopy(dense), record["method"], settings)
    bayes.load_state_dict(state["model"])
    return bayes.eval()


def prune_by_posterior(dense: torch.nn.Module, run_dir: Path, target_macs: int, example: torch.Tensor
                       ) -> tuple[torch.nn.Module, float]:
    """The dense weights cut to the channels a bayescomp posterior keeps under a MAC budget (Torch-Pruning's
    count). Returns the pruned model and the shared log-alpha threshold."""
    from bayescomp.compress.search import budget_threshold_search
    from bayescomp.compress.structure import GraphStructure

    record = json.loads((run_dir / "run.json").read_text())
    bayes = posterior_from_run(dense, run_dir)
    structure = GraphStructure(bayes, example, record.get("compress", {}).get("graph_reduce", "min"))
    structure.graph.plain.load_state_dict(dense.state_dict())  # same names: the cut takes the dense weights
    found = budget_threshold_search(
        structure.stats, structure.strict_plan, lambda keep: macs_and_params(structure.graph.prune(keep), example)[0],
        target_macs, structure.weights_kept, lambda keep: float("nan"))
    return structure.graph.prune(found.plan), found.thresholds[0]


def prune_to_macs(dense: torch.nn.Module, target_macs: int, kind: str, example: torch.Tensor,
                  posterior: dict[str, torch.Tensor] | None = None) -> tuple[torch.nn.Module, float]:
    """Bisect the per-layer channel ratio until the pruned MACs are within 1 % of ``target_macs``."""
    lo, hi, best, best_gap = 0.0, 0.95, None, float("inf")
    for _ in range(20):
        mid = (lo + hi) / 2
        model = prune_to_ratio(dense, mid, kind, example, posterior)
        macs, _ = macs_and_params(model, example)
        if abs(macs - target_macs) < best_gap:  # keep the closest, not the last
            best, best_gap = (model, mid), abs(macs - target_macs)
        if best_gap <= 0.01 * target_macs:
            break
        lo, hi = (mid, hi) if macs > target_macs else (lo, mid)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets-from", nargs="*", default=[], help="bayescomp result JSONs whose MACs to match")
    parser.add_argument("--show", nargs="*", default=[],
                        help="bayescomp result JSONs shown in the table and plot without a matched pruning run")
    parser.add_argument("--fractions", type=float, nargs="*", default=[], help="MAC targets as fractions of dense")
    parser.add_argument("--importance", nargs="+", default=["group_norm"],
                        choices=("group_norm", "l1", "bn", "posterior", "posterior_uniform", "posterior_snr"))
    parser.add_argument("--posterior", type=Path, default=None,
                        help="bayescomp run directory whose bayes.ckpt ranks the channels (--importance posterior)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="default: the matched bayescomp run's Bayesian + fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                        help="fine-tuning optimiser (sgd: Nesterov momentum 0.9); give the bayescomp run the same")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="fine-tuning L2 penalty")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast in fine-tuning")
    parser.add_argument("--device", default=None,
                        help="fine-tune and evaluate there (e.g. cuda; default: the CPU); pruning stays on the CPU")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each fine-tuning step as one CUDA graph (bayescomp.cuda_graphs; --device cuda)")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="fine-tune with knowledge distillation from the dense model, this weight alpha on the "
                             "soft term (bayescomp.distill; 0: labels only); give the bayescomp run the same")
    parser.add_argument("--distill-temperature", type=float, default=4.0, help="its softening temperature")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (data order, augmentation)")
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

    targets, records = [], []
    for path in args.targets_from:
        record = json.loads(Path(path).read_text())
        records.append(record)
        epochs = args.finetune_epochs if args.finetune_epochs is not None else (
            int(record.get("epochs", 0)) + int(record.get("finetune_epochs", 0)))
        ratio = record["flops_compressed"] / record["flops_dense"]
        targets.append({"macs": int(ratio * dense_macs), "epochs": epochs, "matched": Path(path).name})
    records += [json.loads(Path(path).read_text()) for path in args.show if path not in args.targets_from]
    default_epochs = targets[0]["epochs"] if targets else 2
    for fraction in args.fractions:
        epochs = args.finetune_epochs if args.finetune_epochs is not None else default_epochs  # 0: none
        targets.append({"macs": int(fraction * dense_macs), "epochs": epochs,
                        "matched": None})

    out = Path(args.out)
    settings = {"lr": args.lr, "amp": args.amp, "dense_test_error_pct": dense_test}
    # None when off, so a plain rerun never takes a distilled row for its own (and old rows, without the key, match)
    settings["distill"] = {"alpha": args.distill, "temperature": args.distill_temperature} if args.distill else None
    if args.device:
        settings["device"] = args.device
    if args.optimizer != "adam" or args.weight_decay:  # absent for the default, so older rows still match
        settings.update(optimizer=args.optimizer, weight_decay=args.weight_decay)
    if args.seed:  # absent for seed 0, so older rows (all seed 0) still match
        settings["seed"] = args.seed
    rows = _previous_rows(out)  # every measured row stays in the file; only one with these settings is skipped
    score_readers = {"posterior_uniform": lambda: posterior_scores(dense, args.posterior),
                     "posterior_snr": lambda: posterior_snr(dense, args.posterior, example)}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for target in targets:
        for kind in args.importance:
            wanted = {**settings, **({"posterior": str(args.posterior)} if kind.startswith("posterior") else {})}
            if already_measured(rows, kind, target, wanted):
                print(f"{kind} at {target['macs'] / 1e6:.2f} M MACs, {target['epochs']} epochs: already measured")
                continue
            t0 = time.perf_counter()
            if kind.startswith("posterior") and args.posterior is None:
                parser.error(f"--importance {kind} needs --posterior RUN_DIR")
            if kind == "posterior":
                model, ratio = prune_by_posterior(dense, args.posterior, target["macs"], example)
            else:
                if kind in score_readers and kind not in scores:  # the posterior is read once per ranking
                    scores[kind] = score_readers[kind]()
                model, ratio = prune_to_macs(dense, target["macs"], kind, example, scores.get(kind))
            macs, params = macs_and_params(model, example)
            with placed(model, args.device):
                before = evaluate(model, data.val)["error_pct"]
            config = TrainConfig(epochs=target["epochs"], lr=args.lr, lr_schedule="cosine", augment="crop_flip",
                                 distill=args.distill, distill_temperature=args.distill_temperature,
                                 optimizer=args.optimizer, weight_decay=args.weight_decay, seed=args.seed)
            fit(model, data, config, progress=False, amp=args.amp, log=lambda *_: None, device=args.device,
                cuda_graphs=args.cuda_graphs, teacher=dense if args.distill else None)
            with placed(model, args.device):
                val_error, test_error = (evaluate(model, split)["error_pct"] for split in (data.val, data.test))
            row = {"importance": kind, "matched": target["matched"],
                   "pruning_ratio": None if kind == "posterior" else round(ratio, 4),
                   "flops_compressed": macs, "params_compressed": params, "mac_ratio": dense_macs / macs,
                   "param_ratio": dense_params / params, "finetune_epochs": target["epochs"],
                   "val_error_before_finetune_pct": before, "val_error_pct": val_error,
                   "test_error_pct": test_error, "target_macs": target["macs"],
                   "wall_time_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(), **settings}
            row["command"] = this_command()
            if kind == "posterior":
                row.update(posterior=str(args.posterior), log_alpha_threshold=round(ratio, 4))
            if kind in ("posterior_uniform", "posterior_snr"):
                row.update(posterior=str(args.posterior))
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(out, rows, records, dense_test, dense_macs, dense_params, args, started)
    _write(out, rows, records, dense_test, dense_macs, dense_params, args, started)


def _previous_rows(out: Path) -> list[dict]:
    path = out.with_suffix(".json")
    return json.loads(path.read_text()).get("rows", []) if path.exists() else []


def already_measured(rows: list[dict], kind: str, target: dict, settings: dict) -> bool:
    """A row of this importance, MAC target and epochs measured with the same settings (lr, bf16, dense error).

    Rows measured with other settings are not a match, but they stay in the file: a run with other settings (or
    one that only ``--show``s bayescomp results) must never drop a measured row."""
    return any(_same_target(r, kind, target) and all(r.get(k) == v for k, v in settings.items()) for r in rows)


def _same_target(row: dict, kind: str, target: dict) -> bool:
    return (row["importance"] == kind and row["finetune_epochs"] == target["epochs"]
            and abs(row.get("target_macs", row["flops_compressed"]) - target["macs"]) <= 0.01 * target["macs"])


_ROW_LABELS = {
    "posterior": "bayescomp posterior's channels, dense weights",
    "posterior_uniform": "posterior ranking, Torch-Pruning's uniform layer ratio, dense weights",
    "posterior_snr": "posterior signal-to-noise ranking, Torch-Pruning's uniform layer ratio, dense weights",
}


def _row_label(kind: str) -> str:
    return _ROW_LABELS.get(kind, f"Torch-Pruning {kind}")


def _distill_label(distill: dict | None) -> str:
    """``, distilled from the dense model (alpha 0.9, T 4)`` for a fine-tuning that used distillation, else ``""``."""
    if not distill:
        return ""
    return f", distilled from the dense model (alpha {distill['alpha']:g}, T {distill['temperature']:g})"


def _finetuned_val_label(record: dict) -> str:
    """The bayescomp run's validation error after its fine-tuning (5,000 images), ``-`` where not recorded."""
    val = finetuned_val_error(record)
    return "-" if val is None else f"{val:.2f} %"


def _optimizer_label(optimizer: str | None, lr: float | None, weight_decay: float | None) -> str:
    """``, SGD lr 0.02, weight decay 0.0005`` for a fine-tuning that was not Adam (the default), else ``""``."""
    if optimizer in (None, "adam"):
        return ""
    return f", {optimizer.upper()} lr {lr:g}, weight decay {weight_decay or 0:g}"


def _seed_label(seed: int | None) -> str:
    """``, seed 1`` for a fine-tuning seeded otherwise than the default 0, else ``""``."""
    return f", seed {seed}" if seed else ""


def _bayes_finetune_label(record: dict) -> str:
    """The bayescomp run's pruning and, in brackets, its fine-tuning recipe (epochs, distillation, optimizer)."""
    finetune = record.get("config", {}).get("finetune", {})
    return (f"{_bayes_label(record)} ({record.get('finetune_epochs', 0)} fine-tuning epochs"
            f"{_distill_label(record.get('finetune_distill'))}"
            f"{_optimizer_label(finetune.get('optimizer'), finetune.get('lr'), finetune.get('weight_decay'))}"
            f"{_seed_label(record.get('train_seed'))})")


def _bayes_label(record: dict) -> str:
    """``bayescomp gnj, 2x MAC budget`` or ``bayescomp gnj, 1.0-point search``: how the run chose its pruning."""
    compress = record.get("config", {}).get("compress", {})
    budget = budget_label(compress)
    how = budget or f"{compress.get('tolerance_pct', 0):g}-point search"
    if budget and compress.get("search") in ("greedy", "uniform"):
        how += f", {compress['search']} allocation"
    if compress.get("search_bn_images"):
        how += f", adaptive batch norm ({compress['search_bn_images']} images)"
    if compress.get("cut_weights") == "dense":
        how += ", cut from the dense weights"
    if record.get("defect"):  # its settings do not say what it did (benchmarks/results: the record's defect)
        how += f", channels asked to be ordered by {compress.get('channel_score')} but ordered by log alpha (defect)"
    elif compress.get("channel_score", "log_alpha") != "log_alpha":
        how += f", channels ordered by {compress['channel_score']}"
    kl_scale = record.get("config", {}).get("prior", {}).get("group_kl_scale", 1.0)
    if kl_scale != 1.0:
        how += f", groups' KL x{kl_scale:g}"
    return f"bayescomp {record['method']}, {how}"


def _write(out: Path, rows: list[dict], records: list[dict], dense_test: float, dense_macs: int, dense_params: int,
           args: argparse.Namespace, started: float) -> None:
    rows = sorted(rows, key=lambda r: (r["importance"], -r["flops_compressed"]))
    result = {"model": "resnet20", "data": "cifar10", "method": "torch-pruning", "torch_pruning": tp.__version__,
              "flops_dense": dense_macs, "params_dense": dense_params, "dense_test_error_pct": dense_test,
              "finetune": {"optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay,
                           "schedule": "cosine", "augment": "crop_flip", "amp": args.amp,
                           "note": "the last run's; each row records its own lr, and its optimizer and weight "
                                   "decay where they are not Adam without decay"},
              "rows": rows, "wall_time_s": round(time.perf_counter() - started, 1),
              "threads": torch.get_num_threads(),
              "command": this_command()}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Torch-Pruning on pretrained ResNet-20/CIFAR-10 (dense {dense_test:.2f} % test error, "
             f"{dense_macs / 1e6:.1f} M MACs)", "", f"Command: `{result['command']}`", "",
             "| importance | matched | MACs | MAC ratio | param ratio | epochs | val err | test err |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        posterior = f" (posterior `{r['posterior']}`)" if r.get("posterior") else ""
        lines.append(f"| {_row_label(r['importance'])}{posterior}{_distill_label(r.get('distill'))}"
                     f"{_optimizer_label(r.get('optimizer'), r.get('lr'), r.get('weight_decay'))}"
                     f"{_seed_label(r.get('seed'))} | "
                     f"{r['matched'] or '-'} | "
                     f"{r['flops_compressed'] / 1e6:.2f} M | "
                     f"{r['mac_ratio']:.2f}x | {r['param_ratio']:.2f}x | {r['finetune_epochs']} | "
                     f"{r['val_error_pct']:.2f} % | {r['test_error_pct']:.2f} % |")
    for record in records:
        lines.append(f"| {_bayes_finetune_label(record)} | - | "
                     f"{record['flops_compressed'] / 1e6:.2f} M (bayescomp count) | "
                     f"{record['flops_dense'] / record['flops_compressed']:.2f}x | "
                     f"{record['weights_dense'] / record['weights_kept']:.2f}x | "
                     f"{int(record.get('epochs', 0)) + int(record.get('finetune_epochs', 0))} | "
                     f"{_finetuned_val_label(record)} | "
                     f"{record['test_error_pct']:.2f} % |")
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    if commands:
        lines += ["", "Row commands (each row was measured by one of these; a rerun skips measured rows): "
                  + "; ".join(f"`{c}`" for c in commands)]
    plot = _plot(rows, records, dense_test, dense_macs, out.name)
    if plot is not None:
        lines += ["", f"![{plot.stem}](benchmarks/results/plots/{plot.name})"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')}")


def _plot(rows: list[dict], records: list[dict], dense_test: float, dense_macs: int, stem: str) -> Path | None:
    """Test error against the fraction of dense MACs kept, both libraries on one axis."""
    if not rows and not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6.5))  # as wide as the legend below it, which names each recipe
    ax.set_prop_cycle(color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2])  # 20 colours before a repeat
    def curve_key(r: dict) -> tuple:  # one line per fine-tuning recipe: rows trained differently never join
        return (r["importance"], r["finetune_epochs"], _distill_label(r.get("distill")),
                _optimizer_label(r.get("optimizer"), r.get("lr"), r.get("weight_decay")), _seed_label(r.get("seed")))

    for kind, epochs, distilled, optimizer, seed in sorted({curve_key(r) for r in rows}):
        mine = sorted((r for r in rows if curve_key(r) == (kind, epochs, distilled, optimizer, seed)),
                      key=lambda r: r["flops_compressed"])
        ax.plot([r["flops_compressed"] / dense_macs for r in mine], [r["test_error_pct"] for r in mine],
                "s-" if kind.startswith("posterior") else "o-",
                label=f"{_row_label(kind)}, fine-tuned {epochs} epochs{distilled}{optimizer}{seed}")
    curves_drawn = set()  # runs cut from one posterior share its threshold curve: one line per method
    for record in records:
        curve = [p for p in record.get("tradeoff_curve", []) if "flops" in p]
        if curve and record["method"] not in curves_drawn:
            curves_drawn.add(record["method"])
            curve.sort(key=lambda p: p["flops"])
            ax.plot([p["flops"] / record["flops_dense"] for p in curve], [p["test_error_pct"] for p in curve],
                    ".--", color="grey" if record["method"] == "gnj" else "silver",
                    label=f"bayescomp {record['method']}, shared threshold, no fine-tuning")
        ax.plot(record["flops_compressed"] / record["flops_dense"], record["test_error_pct"], "*", ms=14,
                label=_bayes_finetune_label(record))
    ax.axhline(dense_test, color="k", lw=0.8, ls=":", label=f"dense {dense_test:.2f} %")
    ax.set_xlabel("MACs kept (fraction of dense)")
    ax.set_ylabel("test error %")
    worst = max([r["test_error_pct"] for r in rows] + [r["test_error_pct"] for r in records] + [dense_test])
    ax.set_ylim(bottom=max(0.0, dense_test - 1.0), top=min(100.0, max(dense_test + 8.0, worst + 1.0)))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=1)
    ax.set_title("ResNet-20 / CIFAR-10 from the same pretrained weights")
    path = RESULTS / "plots" / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
