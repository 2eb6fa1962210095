"""Data-parallel (DDP) Bayesian training against one process: loss curve, masks and throughput.

The same BC-GNJ model (bayesified from one dense model, same seed, same global batch) is trained once in a single
process and once with 2 ranks under torchrun (gloo, CPU). Recorded: the per-epoch global train loss of both runs,
the masks that the 2-rank run's searched thresholds give on each rank and on the 1-rank posterior, and the training
throughput (examples per second of the training loop, validation excluded; the single process is timed with
all cores' threads and with one thread). Writes
benchmarks/results/ddp_<model>_<data>.json/.md.

    python -m benchmarks.ddp [--model lenet300] [--data mnist] [--epochs 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bayescomp import distributed
from bayescomp.bayesify import bayesify
from bayescomp.compress import CompressConfig, compress
from bayescomp.pipeline import RunConfig, build_dense, dense_model, git_commit, load_data
from bayescomp.train import fit, seed_everything
from benchmarks._common import RESULTS, this_command

METHOD = "gnj"


def run_config(args: argparse.Namespace) -> RunConfig:
    config = RunConfig(model=args.model, data=args.data, method=METHOD, seed=args.seed,
                       train_subset=args.train_subset)
    config.dense = replace(config.dense, epochs=args.dense_epochs, batch_size=args.batch_size)
    config.bayes = replace(config.bayes, epochs=args.epochs, batch_size=args.batch_size)
    return config


def worker(args: argparse.Namespace) -> None:
    """One training run (1 process, or one rank of a torchrun group); rank 0 writes ``<out>/result.pt``."""
    distributed.init_from_env()
    config = run_config(args)
    data = load_data(config)
    dense = build_dense(config, data)
    dense.load_state_dict(torch.load(Path(args.worker) / "dense.pt", weights_only=True))
    seed_everything(config.seed)
    model = bayesify(dense, METHOD, config.prior)
    started = time.perf_counter()
    history = fit(model, data, config.bayes, progress=False)  # only rank 0 logs
    wall = time.perf_counter() - started
    thresholds = None
    if distributed.is_main():
        with distributed.local_only():
            thresholds = compress(model, data.val, CompressConfig()).thresholds
    thresholds = distributed.broadcast(thresholds)
    digests = distributed.all_gather(distributed.mask_digest(model, thresholds))
    if distributed.is_main():
        torch.save({"history": history.epochs, "thresholds": thresholds, "digests": digests, "wall_s": wall,
                    "n_train": len(data.train), "threads": torch.get_num_threads(),
                    "world": distributed.world_size(), "state": model.state_dict()},
                   Path(args.worker) / f"result_{distributed.world_size()}x{torch.get_num_threads()}.pt")


def launch(args: argparse.Namespace, work: Path, ranks: int, threads: int) -> dict:
    """Run :func:`worker` with ``ranks`` processes of ``threads`` intra-op threads each; its result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    script = [str(Path(__file__).resolve()), *sys.argv[1:], "--worker", str(work)]
    if ranks == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
    subprocess.run(cmd, env=env, check=True)
    return torch.load(work / f"result_{ranks}x{threads}.pt", weights_only=True)


def masks_of(state: dict, config: RunConfig, data, thresholds) -> list[torch.Tensor]:
    seed_everything(config.seed)
    model = bayesify(build_dense(config, data), METHOD, config.prior)
    model.load_state_dict(state)
    return distributed.keep_masks(model, thresholds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dense-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch of both runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=None, help="fewer training examples (smoke tests)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    cores = os.cpu_count() or 1
    config = run_config(args)
    data = load_data(config)
    with tempfile.TemporaryDirectory(prefix="bayescomp-ddp-") as tmp:
        work = Path(tmp)
        torch.save(dense_model(config, data, progress=False).state_dict(), work / "dense.pt")
        one = launch(args, work, 1, cores)
        one_thread = launch(args, work, 1, 1) if cores > 1 else one  # per-core baseline for the speed-up
        many = launch(args, work, args.ranks, max(1, cores // args.ranks))
    masks_one = masks_of(one["state"], config, data, many["thresholds"])
    masks_many = masks_of(many["state"], config, data, many["thresholds"])
    agree = sum(int((a == b).sum()) for a, b in zip(masks_one, masks_many))
    total = sum(m.numel() for m in masks_one)

    def curve(result: dict, key: str) -> list[float]:
        return [e[key] for e in result["history"]]

    def throughput(result: dict) -> float:
        return result["n_train"] / statistics.median(e["epoch_s"] for e in result["history"])

    loss_one, loss_many = curve(one, "loss"), curve(many, "loss")
    record = {
        "model": args.model, "data": args.data, "method": METHOD, "seed": args.seed, "ranks": args.ranks,
        "global_batch": args.batch_size, "epochs": args.epochs, "dense_epochs": args.dense_epochs,
        "n_train": one["n_train"], "backend": "gloo",
        "loss_curve_1rank": loss_one, "loss_curve_2ranks": loss_many,
        "loss_curve_max_gap": max(abs(a - b) for a, b in zip(loss_one, loss_many)),
        "nll_curve_1rank": curve(one, "nll"), "nll_curve_2ranks": curve(many, "nll"),
        "nll_curve_max_gap": max(abs(a - b) for a, b in zip(curve(one, "nll"), curve(many, "nll"))),
        "val_error_pct_curve_1rank": curve(one, "val_error_pct"),
        "val_error_pct_curve_2ranks": curve(many, "val_error_pct"),
        "val_error_pct_1rank": one["history"][-1]["val_error_pct"],
        "val_error_pct_2ranks": many["history"][-1]["val_error_pct"],
        "thresholds_2ranks": many["thresholds"], "thresholds_1rank": one["thresholds"],
        "same_masks": len(set(many["digests"])) == 1, "mask_digests_2ranks": many["digests"],
        "masks_equal_1rank_vs_2ranks": agree == total, "mask_agreement_1rank_vs_2ranks": agree / total,
        "kept_groups_1rank": [int(m.sum()) for m in masks_one[: len(masks_one) // 2]],
        "kept_groups_2ranks": [int(m.sum()) for m in masks_many[: len(masks_many) // 2]],
        "epoch_s_1rank": curve(one, "epoch_s"), "epoch_s_2ranks": curve(many, "epoch_s"),
        "samples_per_s": throughput(many), "samples_per_s_1rank": throughput(one),
        "speedup": throughput(many) / throughput(one),
        "epoch_s_1rank_1thread": curve(one_thread, "epoch_s"), "samples_per_s_1rank_1thread": throughput(one_thread),
        "speedup_vs_1rank_1thread": throughput(many) / throughput(one_thread),
        "loss_curve_1rank_1thread": curve(one_thread, "loss"),
        # the scale of float noise alone: the same single-process run with 1 and with all threads
        "loss_curve_max_gap_1rank_threads": max(abs(a - b) for a, b in zip(loss_one, curve(one_thread, "loss"))),
        "torch_threads": {"1rank": one["threads"], "2ranks_per_rank": many["threads"], "1rank_1thread": 1},
        "device": f"{cores}-core CPU, gloo (shared with other jobs: throughput is indicative)",
        "command": this_command(), "git_commit": git_commit(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"ddp_{args.model}_{args.data}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))


def markdown(r: dict) -> str:
    rows = "\n".join(f"| {e + 1} | {a:.4f} | {b:.4f} | {c:.2f} | {d:.2f} |" for e, (a, b, c, d) in enumerate(
        zip(r["loss_curve_1rank"], r["loss_curve_2ranks"], r["val_error_pct_curve_1rank"],
            r["val_error_pct_curve_2ranks"])))
    return (
        f"# DDP: {r['model']} on {r['data']}, BC-GNJ, global batch {r['global_batch']}, {r['epochs']} epochs\n\n"
        f"| epoch | train loss, 1 rank | train loss, {r['ranks']} ranks | val err % 1 rank | "
        f"val err % {r['ranks']} ranks |\n|---|---|---|---|---|\n{rows}\n\n"
        f"- loss curve max gap {r['loss_curve_max_gap']:.4g} (NLL {r['nll_curve_max_gap']:.4g}); for scale, the "
        f"single process with 1 vs {r['torch_threads']['1rank']} threads: "
        f"{r['loss_curve_max_gap_1rank_threads']:.4g}\n"
        f"- same masks on all {r['ranks']} ranks: {r['same_masks']}; masks of the 1-rank posterior with the "
        f"{r['ranks']}-rank thresholds equal: {r['masks_equal_1rank_vs_2ranks']} "
        f"({100 * r['mask_agreement_1rank_vs_2ranks']:.2f} % of mask entries agree; kept groups "
        f"{r['kept_groups_1rank']} vs {r['kept_groups_2ranks']})\n"
        f"- throughput (training loop, examples/s): 1 rank x {r['torch_threads']['1rank']} threads "
        f"{r['samples_per_s_1rank']:.0f}; {r['ranks']} ranks x {r['torch_threads']['2ranks_per_rank']} thread(s) "
        f"{r['samples_per_s']:.0f} ({r['speedup']:.2f}x); 1 rank x 1 thread {r['samples_per_s_1rank_1thread']:.0f} "
        f"({r['speedup_vs_1rank_1thread']:.2f}x); medians over the epochs; {r['device']}\n"
        f"- command: `{r['command']}`\n"
    )


if __name__ == "__main__":
    main()
