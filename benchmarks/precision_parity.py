"""Accuracy parity of the faster training paths on a full recipe: BC-GNJ end to end, fp32 vs bf16, z per example vs
z per mini-batch, local reparameterisation vs one weight draw per mini-batch (``w/batch``), PyTorch's normal
generator vs the compiled Philox kernel (``philox``, :mod:`bayescomp.noise`), eager vs compiled training steps
(``compiled``, :mod:`bayescomp.compiled_step`; every other variant runs eager steps), same seed, same cached
dense network, the pipeline's default schedule for the model (``pipeline.DEFAULT_SCHEDULES``), compression with the
default threshold search.

Writes benchmarks/results/precision_parity_<model>_<data>.json / .md: test error of the compressed model, the
Bayesian (posterior-mean) error, the kept architecture, the compression ratios and the measured s/epoch.

    OMP_NUM_THREADS=1 python benchmarks/precision_parity.py [--model lenet300] [--seeds 0] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, this_command  # noqa: E402

from bayescomp.compiled_step import set_step_compilation  # noqa: E402
from bayescomp.noise import set_noise_source  # noqa: E402
from bayescomp.pipeline import RunConfig, git_commit, run  # noqa: E402
from bayescomp.train import native_bf16  # noqa: E402

VARIANTS = {"fp32 z/example": ("fp32", "example", "local", "torch", "eager"),
            "bf16 z/example": ("bf16", "example", "local", "torch", "eager"),
            "fp32 z/batch": ("fp32", "batch", "local", "torch", "eager"),
            "bf16 z/batch": ("bf16", "batch", "local", "torch", "eager"),
            "fp32 z/example w/batch": ("fp32", "example", "batch", "torch", "eager"),
            "fp32 z/batch w/batch": ("fp32", "batch", "batch", "torch", "eager"),
            "bf16 z/example philox": ("bf16", "example", "local", "philox", "eager"),
            "bf16 z/example philox compiled": ("bf16", "example", "local", "philox", "compiled"),
            "bf16 z/auto philox compiled": ("bf16", "auto", "local", "philox", "compiled")}


def variant_of(row: dict) -> tuple[str, str, str, str, str]:
    """(precision, z_sampling, weight_sampling, noise source, step) of a row; rows from before an option are local,
    drew their noise with torch.randn and ran eager steps."""
    return (row["precision"], row["z_sampling"], row.get("weight_sampling", "local"), row.get("noise", "torch"),
            row.get("step", "eager"))


def label(variant: tuple[str, str, str, str, str]) -> str:
    precision, z, weights, noise, step = variant
    return (f"{precision} z/{z}" + (" w/batch" if weights == "batch" else "") + (" philox" if noise == "philox" else "")
            + (" compiled" if step == "compiled" else ""))


KEYS = ("test_error_pct", "test_error_pct_bayes", "dense_test_error_pct", "kept_architecture",
        "compression_architecture", "compression_bits", "compression_file", "epoch_s_mean", "thresholds")


def one_run(model: str, data: str, seed: int, precision: str, z_sampling: str, weight_sampling: str, noise: str,
            step: str, root: Path) -> dict:
    set_noise_source(noise)
    set_step_compilation("on" if step == "compiled" else "off")
    config = RunConfig(model=model, data=data, method="gnj", seed=seed,
                       prior={"z_sampling": z_sampling, "weight_sampling": weight_sampling}, latency=False, plots=False)
    run_dir = root / f"{model}_{precision}_{z_sampling}_{weight_sampling}_{noise}_{step}_{seed}"
    report = run(config, run_dir, log=lambda *_: None, progress=False, amp=precision == "bf16")
    return {"seed": seed, "precision": precision, "z_sampling": z_sampling, "weight_sampling": weight_sampling,
            "noise": noise, "step": step, **{k: report.get(k) for k in KEYS},
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(), "git_commit": git_commit()}


def markdown(rows: list[dict], header: dict) -> str:
    lines = [f"BC-GNJ {header['model']}/{header['data']}, default schedule ({header['bayes_epochs']} Bayesian epochs), "
             f"CPU {header['threads']} thread(s). CPU: the row's machine (its vector ISA, and whether it has native "
             "bf16); 'not recorded' for rows made before each row recorded it.", "",
             "| variant | seed | test error % (compressed) | error % (posterior mean) | kept architecture | "
             "compression (architecture) | compression (bits) | s/epoch | CPU |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {label(variant_of(r))} | {r['seed']} | {r['test_error_pct']:.2f} | "
                     f"{r['test_error_pct_bayes']:.2f} | {r['kept_architecture']} | "
                     f"{r['compression_architecture']:.1f}x | {r['compression_bits']:.1f}x | {r['epoch_s_mean']:.2f} | "
                     f"{_machine(r)} |")
    variants = sorted({variant_of(r) for r in rows})
    if any(sum(1 for r in rows if variant_of(r) == v) > 1 for v in variants):
        lines += ["", "Mean ± sample standard deviation over seeds:", "",
                  "| variant | seeds | test error % | error % (posterior mean) | compression (architecture) |",
                  "|---|---|---|---|---|"]
        for variant in variants:
            mine = [r for r in rows if variant_of(r) == variant]
            cells = [_spread([r[k] for r in mine]) for k in ("test_error_pct", "test_error_pct_bayes",
                                                               "compression_architecture")]
            lines.append(f"| {label(variant)} | {len(mine)} | {cells[0]} | {cells[1]} | {cells[2]}x |")
    return "\n".join(lines) + "\n"


def _machine(row: dict) -> str:
    if "cpu_capability" not in row:
        return "not recorded"
    return f"{row['cpu_capability']}, " + ("native bf16" if row.get("native_bf16") else "no native bf16")


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stem = f"precision_parity_{args.model}_{args.data}"
    path = RESULTS / f"{stem}.json"
    if args.table_only:
        header = json.loads(path.read_text())
        (RESULTS / f"{stem}.md").write_text(markdown(header["runs"], header))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in args.variants.split(","):
                rows.append(one_run(args.model, args.data, seed, *VARIANTS[name], Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    # read the earlier rows only now: another invocation (another seed) may have written while this one trained
    previous = json.loads(path.read_text())["runs"] if path.exists() else []
    done = {(r["seed"], *variant_of(r)) for r in rows}
    rows = sorted([r for r in previous if (r["seed"], *variant_of(r)) not in done] + rows,
                  key=lambda r: (r["seed"], r["z_sampling"], r.get("weight_sampling", "local"), r["precision"],
                                 r.get("noise", "torch"), r.get("step", "eager")))
    config = RunConfig(model=args.model, data=args.data, method="gnj")
    header = {"model": args.model, "data": args.data, "bayes_epochs": config.bayes.epochs,
              "bayes_schedule": config.to_dict()["bayes"], "threads": torch.get_num_threads(),
              "native_bf16": native_bf16(), "command": this_command(), "git_commit": git_commit(),
              "note": "epoch_s_mean is wall time on a shared 2-core machine (other jobs running): compare speed "
                      "with benchmarks/results/epoch_cost.md, not here"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**header, "runs": rows}, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
