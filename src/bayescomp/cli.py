"""Command line: ``bayescomp run`` (train, compress, report), ``bayescomp report RUN_DIR`` and ``export``.

The ``hyper`` subcommands live in :mod:`bayescomp.cli_hyper`, ``data`` and ``bench`` in :mod:`bayescomp.cli_tools`;
this module builds the one parser and dispatches (entry point ``bayescomp.cli:main``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from bayescomp.checkpoint import CheckpointError
from bayescomp.cli_help import (
    DATA_DIR_DEFAULT, DefaultsHelpFormatter, finetune_epochs, group_lr_scale, method_setting, per_method, per_model,
    per_weight_thresholds,
)
from bayescomp.cli_hyper import add_hyper_parser, cmd_hyper
from bayescomp.cli_hyper import parse_options as _options  # benchmarks import it under this name
from bayescomp.cli_tools import add_data_bench_parsers, cmd_bench, cmd_data
from bayescomp.compress import (BUDGET_ORDERS, CHANNEL_SCORES, CUT_WEIGHTS, SEARCHES, CompressConfig, PruneError,
                                UnsupportedModelError)
from bayescomp.compress.packed import PackedFormatError
from bayescomp.data import DataError
from bayescomp.data_sources import data_slug
from bayescomp.export import ExportError
from bayescomp.models import MODELS
from bayescomp.methods import get_method, list_methods, method_keys
from bayescomp.runlock import RunDirLockedError
from bayescomp.train import OPTIMIZERS, NonFiniteLossError, TrainConfig
from bayescomp.validate import check_cli_values


KNOWN_ERRORS = (DataError, PruneError, UnsupportedModelError, NonFiniteLossError, CheckpointError, ValueError,
                FileNotFoundError, PackedFormatError, ExportError, RunDirLockedError)


def _floats(text: str) -> list[float] | float | str:
    if text.strip() == "search":
        return "search"
    values = [float(v) for v in text.split(",") if v.strip()]
    return values[0] if len(values) == 1 else values


DESCRIPTION = ("Make a network small and fast with Bayesian compression: train it under a sparsity prior, prune the "
               "neurons, filters and weights its posterior does not need, choose bits per layer, and write a plain "
               "PyTorch model with a report. Start with `bayescomp run --help`.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayescomp", description=DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    add_hyper_parser(sub)
    exp = sub.add_parser("export", help="export a run's compressed model (checked against PyTorch on test images)",
                         formatter_class=DefaultsHelpFormatter)
    exp.add_argument("run_dir", help="the run directory written by `bayescomp run`")
    exp.add_argument("--format", required=True, choices=("onnx", "torchscript", "torch_export", "packed"),
                     help="onnx (run by onnxruntime), torchscript, torch_export (.pt2) or packed (.bcz)")
    exp.add_argument("--out", default=None, help="output file (default: RUN_DIR/compressed.<suffix>)")
    exp.add_argument("--onnx-exporter", choices=("dynamo", "torchscript"), default="dynamo",
                     help="torch.onnx exporter")
    exp.add_argument("--data-dir", default=None, help="folder with the data sets (default: the run's)")
    rep = sub.add_parser("report", help="print the report of a finished run", formatter_class=DefaultsHelpFormatter)
    rep.add_argument("run_dir", help="the run directory written by `bayescomp run`")
    rep.add_argument("--json", action="store_true", help="print the JSON instead of markdown")
    add_data_bench_parsers(sub)
    return parser


def _add_run_parser(sub) -> None:
    """``bayescomp run``; defaults that depend on the model or method are read from the tables the run uses."""
    run = sub.add_parser("run", help="train a model under a sparsity prior, compress it and write a report",
                         formatter_class=DefaultsHelpFormatter)
    run.add_argument("--model", default="lenet300", help=f"zoo model: {', '.join(sorted(MODELS))}")
    run.add_argument("--data", default=None,
                     help="data set: mnist, fashion-mnist, cifar10, or a folder of images with one sub-folder per "
                          "class (10 %% carved for validation, and 10 %% for test unless it has train/ and test/ "
                          "sub-folders; default: the model's usual data set)")
    run.add_argument("--image-size", default=None, type=_image_size, metavar="HxW",
                     help="resize every image of an image-folder --data to this size (default: all images must "
                          "share the first image's size)")
    run.add_argument("--method", default="gnj",
                     help="; ".join(f"{name}: {get_method(name).description}" for name in list_methods())
                     + " (also accepted: " + ", ".join(k for k in method_keys() if k not in list_methods()) + ")")
    run.add_argument("--run-dir", default=None, help="output directory (default: runs/<model>_<data>_<method>)")
    run.add_argument("--data-dir", default=None,
                     help=f"folder with mnist/, fashion-mnist/, cifar-10/ (default: {DATA_DIR_DEFAULT})")
    run.add_argument("--seed", type=int, default=0, help="random seed (data split, order, noise)")
    run.add_argument("--epochs", type=int, default=None,
                     help="Bayesian training epochs, >= 0; 0 compresses the untrained posterior, whose means are the "
                          f"dense weights (default: {per_model('epochs')})")
    run.add_argument("--dense-epochs", type=int, default=None,
                     help=f"dense pre-training epochs (default: {per_model('epochs', 'dense')})")
    run.add_argument("--lr", type=float, default=None,
                     help=f"Adam learning rate of Bayesian training (default: {per_model('lr')})")
    run.add_argument("--batch-size", type=int, default=None,
                     help=f"mini-batch size of both training phases (default: {per_model('batch_size')})")
    run.add_argument("--kl-warmup", type=float, default=None,
                     help=f"epochs of linear KL warm-up from 0 to 1 (default: {per_model('kl_warmup_epochs')})")
    run.add_argument("--group-lr-scale", type=float, default=None,
                     help="learning-rate multiplier for the parameters that decide which groups survive (the "
                          "method's group_lr_suffixes: gnj z_log_sigma2, ghs the group and global scales; "
                          f"default: {per_method(group_lr_scale)})")
    run.add_argument("--finetune-epochs", type=int, default=None,
                     help="epochs of plain fine-tuning of the pruned model before quantisation, 0: none "
                          f"(default: {per_method(finetune_epochs)})")
    run.add_argument("--finetune-lr", type=float, default=None,
                     help="learning rate of that fine-tuning (default: the model's recipe)")
    run.add_argument("--finetune-optimizer", choices=OPTIMIZERS, default=None,
                     help="optimiser of that fine-tuning: adam, or sgd with Nesterov momentum 0.9, as CIFAR ResNets "
                          "are trained (default: adam)")
    run.add_argument("--finetune-weight-decay", type=float, default=None,
                     help="L2 penalty of that fine-tuning (default: 0)")
    run.add_argument("--distill", type=float, default=None, metavar="ALPHA",
                     help="fine-tune the pruned model with knowledge distillation from the run's dense model: "
                          "(1 - ALPHA) cross-entropy + ALPHA T^2 KL on softened outputs (bayescomp.distill; default: "
                          "0, labels only)")
    run.add_argument("--distill-temperature", type=float, default=None, metavar="T",
                     help="softening temperature of --distill (default: 4)")
    run.add_argument("--finetune-search", action="store_true",
                     help="with --finetune-epochs: choose the pruning level by the fine-tuned validation error, "
                          "within --tolerance points of the unpruned posterior mean's")
    run.add_argument("--thresholds", type=_floats, default=None,
                     help="thresholds on the group statistic (log alpha for gnj/svd, -E[log z] for ghs), one per "
                          "layer or one for all (e.g. -2.8,-3,-5), or 'search' (default: the automatic search for "
                          "group priors; each per-weight prior's own threshold on its statistic: "
                          f"{per_weight_thresholds()})")
    run.add_argument("--tolerance", type=float, default=0.2,
                     help="automatic search: allowed validation-error increase in percentage points")
    run.add_argument("--target-macs", type=float, default=None, metavar="FACTOR",
                     help="prune to a compute budget instead: at least FACTOR times fewer multiply-accumulates than "
                          "the dense network (e.g. 2), the posterior choosing which groups go (replaces --tolerance)")
    run.add_argument("--target-weights", type=float, default=None, metavar="FACTOR",
                     help="a budget on the weights kept, alone or with --target-macs: at least FACTOR times fewer "
                          "weights than the dense network (replaces --tolerance)")
    run.add_argument("--budget-order", choices=BUDGET_ORDERS, default="joint",
                     help="with both budgets and --search greedy: count a step's MAC and weight savings together "
                          "(joint), or serve the weights first, then the MACs (stops nearer the MAC budget on a CNN)")
    run.add_argument("--cut-weights", choices=CUT_WEIGHTS, default="posterior",
                     help="the pruned model takes the posterior means (default) or the dense network's weights, the "
                          "posterior still choosing the channels (group priors on non-chain models; "
                          "CompressConfig.cut_weights)")
    run.add_argument("--channel-score", choices=CHANNEL_SCORES, default="log_alpha",
                     help="what orders a group's channels for a budget: the group's log alpha (the paper's), or the "
                          "posterior signal-to-noise ratio of the weights each channel takes with it "
                          "(CompressConfig.channel_score; needs --target-macs/--target-weights)")
    run.add_argument("--search", choices=SEARCHES, default="auto",
                     help="threshold search: greedy per-layer steps, one global threshold by bisection, or auto "
                          "(greedy for chains, global for graphs with many coupled groups); with --target-macs, "
                          "greedy spreads the cut across layers by the validation error and uniform cuts the same "
                          "fraction of every layer")
    run.add_argument("--round-to", type=int, default=1, metavar="K",
                     help="with --search uniform or greedy: every coupled channel group keeps a multiple of K "
                          "channels (e.g. 8 or 16: kernels process channels in vector-width blocks; "
                          "CompressConfig.round_to)")
    run.add_argument("--search-bn-images", type=int, default=0, metavar="N",
                     help="before scoring each search candidate, re-estimate batch-norm statistics on N validation "
                          "images (adaptive batch norm; 0: off); the delivered cut keeps them")
    run.add_argument("--bits-reduce", choices=("mean", "max"), default="mean",
                     help="summarise per-weight bits of a layer by their mean (paper) or max (safer)")
    run.add_argument("--clip-var", type=float, default=None,
                     help="upper bound on weight posterior variances "
                          f"(default: {per_method(method_setting('clip_var'))})")
    run.add_argument("--tau0", type=float, default=None,
                     help=f"scale of the global half-Cauchy (default: {per_method(method_setting('tau0'))})")
    run.add_argument("--prior-option", action="append", default=[], metavar="KEY=VALUE",
                     help="set any field of the method's config (repeatable), e.g. --prior-option spike_std=0.05 "
                          "--prior-option update_every=0 for turbo; see the config classes for the fields")
    run.add_argument("--sparsity", type=float, default=None,
                     help="fraction of weights (or, with --structured, of neurons/filters) to remove "
                          f"(default: {per_method(method_setting('sparsity'))})")
    run.add_argument("--structured", action="store_true", help="magnitude: remove whole neurons/filters by norm")
    run.add_argument("--scope", choices=("global", "layer"), default=None,
                     help="one threshold for all layers (global) or the same fraction per layer "
                          f"(default: {per_method(method_setting('scope'))})")
    run.add_argument("--rounds", type=int, default=None,
                     help=f"gradual pruning rounds (default: {per_method(method_setting('rounds'))})")
    run.add_argument("--val-size", type=int, default=5000, help="validation examples carved from the training set")
    run.add_argument("--train-subset", type=int, default=None, help="use only this many training examples")
    run.add_argument("--test-subset", type=int, default=None, help="use only this many test examples")
    run.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    run.add_argument("--no-plots", action="store_true", help="skip the plots")
    run.add_argument("--config", default=None, metavar="RUN_JSON",
                     help="repeat a run from its record (the run.json of a run directory); its settings replace the "
                          "other run options; --run-dir, --restart, --no-progress, --device and --precision apply")
    run.add_argument("--pretrained", action="store_true",
                     help="start from the dense weights shipped with the package instead of training them")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--restart", action="store_true", help="discard an existing run in --run-dir and start over")
    run.add_argument("--device", default=None,
                     help="training device, e.g. cuda or cuda:1 (default: cpu); the threshold search's evaluations and "
                          "fine-tuning run there too, measurement uses the CPU")
    run.add_argument("--cuda-graphs", action="store_true",
                     help="with --device cuda: replay each Bayesian training step as one CUDA graph (small nets' GPU "
                          "steps are launch-bound: a LeNet-5 BC-GNJ epoch 5.0 s -> 1.1 s on an H200); BC-GNJ, BC-GHS "
                          "and Sparse VD")
    run.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto",
                     help="training precision of the layer products, Bayesian training and fine-tuning: bf16 "
                          "autocast (parameters, variances, KL and loss stay float32), fp32, or auto: bf16 for the "
                          "prior methods where the CPU has native bf16, AVX512-BF16 or AMX; fp32 elsewhere and for "
                          "self/magnitude")
    run.add_argument("--noise", choices=("auto", "philox", "torch"), default=None,
                     help="where the CPU training noise comes from: philox (a compiled Philox4x32-10 + Box-Muller "
                          "kernel, ~3x faster than PyTorch's generator), torch (torch.randn, to reproduce runs made "
                          "before the kernel) or auto: philox where it builds (default: $BAYESCOMP_NOISE, else auto)")
    run.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                     help="compile the Bayesian training step (forward, objective, KL) with torch.compile: on, off, "
                          "or auto: Bayesian networks without convolutions on runs of 5000+ steps, where it was "
                          "measured faster (LeNet-300-100 BC-GNJ 2.1x a plain epoch against 3.4x eager); default: "
                          "$BAYESCOMP_COMPILE, else auto")
    run.add_argument("--amp", action="store_true",
                     help="mixed precision: bfloat16 layer products in training and fine-tuning, float32 parameters, "
                          "variances and KL")
    run.add_argument("--nproc", type=int, default=1,
                     help="data-parallel processes (torchrun; gloo on CPU, nccl on GPU); --batch-size stays the "
                          "global batch, split across the processes")


def _train_config(base: TrainConfig, args: argparse.Namespace, bayes: bool) -> TrainConfig:
    from dataclasses import replace

    changes = {}
    if args.batch_size is not None:  # 0 is an error (checked), not "unset"
        changes["batch_size"] = args.batch_size
    if bayes:
        if args.epochs is not None:
            changes["epochs"] = args.epochs
        if args.lr is not None:
            changes["lr"] = args.lr
        if args.group_lr_scale is not None:
            suffixes = get_method(args.method).group_lr_suffixes
            if not suffixes:
                raise ValueError(f"--group-lr-scale does not apply to --method {args.method} (it has no group "
                                 "scales to speed up)")
            changes["lr_scales"] = {**base.lr_scales, **{suffix: args.group_lr_scale for suffix in suffixes}}
        if args.kl_warmup is not None:
            changes["kl_warmup_epochs"] = args.kl_warmup
    elif args.dense_epochs is not None:
        changes["epochs"] = args.dense_epochs
    return replace(base, **changes)


def _check_options(method: str, options: dict) -> None:
    wrong = sorted(set(options) - set(get_method(method).cli_options))
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise ValueError(f"{flags} do(es) not apply to --method {method}")


def _prior_options(method: str, items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> fields of the method's config, values parsed as JSON where possible."""
    if not items:
        return {}
    return _options(items, get_method(method).config_cls, "--prior-option")


def _use_bf16(args: argparse.Namespace) -> bool:
    """--amp (older switch) or --precision resolved for the training device. auto: bf16 on CPUs with native bf16
    for the prior methods (their step measured faster, GNJ's accuracy measured equal), fp32 for the others."""
    from bayescomp.train import resolve_precision

    if args.amp:
        return True
    if args.precision == "auto" and get_method(args.method).needs != "prior":
        return False
    return resolve_precision(args.precision, (args.device or "cpu").split(":")[0]) == "bf16"


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bayescomp.pipeline import RunConfig

    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:  # re-run this command under torchrun
        from bayescomp.distributed import relaunch_with_torchrun

        return relaunch_with_torchrun(args.nproc, _without_nproc(args.argv))
    if getattr(args, "noise", None) is not None:
        from bayescomp.noise import set_noise_source

        set_noise_source(args.noise)
    if getattr(args, "compile", None) is not None:
        from bayescomp.compiled_step import set_step_compilation

        set_step_compilation(args.compile)

    if args.config is not None:
        config = _config_from_record(args.config)
        args.method, args.model, data = config.method, config.model, config.data
        return _run_and_print(config, args, data)
    data = args.data or (MODELS[args.model].default_data if args.model in MODELS else "mnist")
    options = {"clip_var": args.clip_var, "tau0": args.tau0, "sparsity": args.sparsity, "scope": args.scope,
               "rounds": args.rounds, "structured": args.structured or None}
    prior = {k: v for k, v in options.items() if v is not None}
    _check_options(args.method, prior)
    prior.update(_prior_options(args.method, args.prior_option))
    config = RunConfig(model=args.model, data=data, method=args.method, seed=args.seed, data_dir=args.data_dir,
                       val_size=args.val_size, train_subset=args.train_subset, test_subset=args.test_subset,
                       prior=prior, latency=not args.no_latency, plots=not args.no_plots,
                       pretrained=args.pretrained, image_size=args.image_size,
                       compress=CompressConfig(thresholds=args.thresholds, tolerance_pct=args.tolerance,
                                               bits_reduce=args.bits_reduce,
                                               finetune_search=args.finetune_search, search=args.search,
                                               search_bn_images=args.search_bn_images,
                                               target_macs=args.target_macs,
                                               target_weights=args.target_weights,
                                               budget_order=args.budget_order, cut_weights=args.cut_weights,
                                               channel_score=args.channel_score, round_to=args.round_to))
    config.dense = _train_config(config.dense, args, bayes=False)
    config.bayes = _train_config(config.bayes, args, bayes=True)
    if args.finetune_epochs is not None:  # 0 turns off a method's default fine-tuning (magnitude's)
        config.finetune = replace(config.finetune, epochs=args.finetune_epochs)
    finetune = {"lr": args.finetune_lr, "optimizer": args.finetune_optimizer,
                "weight_decay": args.finetune_weight_decay, "distill": args.distill}
    config.finetune = replace(config.finetune, **{k: v for k, v in finetune.items() if v is not None})
    if args.distill_temperature is not None:
        config.finetune = replace(config.finetune, distill_temperature=args.distill_temperature)
    return _run_and_print(config, args, data)


def _config_from_record(path: str):
    """The :class:`RunConfig` of a run record (``run.json``), with a clear error for a missing or bad file."""
    from bayescomp.pipeline import RunConfig

    record = Path(path)
    try:
        fields = json.loads(record.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {record}: no such file (pass the run.json of a run directory)") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"--config {record}: not a readable JSON run record ({error})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {record}: a run record is a JSON object, got {type(fields).__name__}")
    try:
        return RunConfig.from_dict(fields)
    except TypeError as error:
        raise ValueError(f"--config {record}: {error}") from None


def _run_and_print(config, args: argparse.Namespace, data: str) -> int:
    from bayescomp.pipeline import run
    from bayescomp.report import render_markdown

    run_dir = Path(args.run_dir or f"runs/{config.model}_{data_slug(data)}_{config.method}")
    command = "bayescomp " + " ".join(shlex.quote(a) for a in args.argv)
    report = run(config, run_dir, progress=not args.no_progress, restart=args.restart, command=command,
                 device=args.device, amp=_use_bf16(args), cuda_graphs=getattr(args, "cuda_graphs", False))
    print()
    print(render_markdown(report))
    print(f"run directory: {run_dir}  (compressed model: {run_dir / 'compressed.bcz'})")
    return 0


def _image_size(text: str) -> list[int]:
    """``--image-size HxW`` (or one number for a square) as [height, width]."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 32x32, got {text!r}") from None
    if len(size) == 1:
        size *= 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with positive sizes such as 32x32, got {text!r}")
    return size


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from bayescomp.export import export_run

    result = export_run(args.run_dir, args.format, args.out, args.data_dir, args.onnx_exporter)
    print(f"wrote {result['path']} ({result['bytes']:,} bytes); outputs match PyTorch on {result['check_examples']} "
          f"test images within {result['max_abs_diff']:.2g} (max abs difference of the logits)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from bayescomp.report import load_report, render_markdown

    report = load_report(args.run_dir)
    print(json.dumps(report, indent=2) if args.json else render_markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        check_cli_values(args)  # every numeric option, before any work starts
        if args.command == "hyper":
            return cmd_hyper(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "data":
            return cmd_data(args)
        if args.command == "bench":
            return cmd_bench(args)
        return cmd_run(args) if args.command == "run" else cmd_report(args)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the last completed epoch",
              file=sys.stderr)
        return 130
    except KNOWN_ERRORS as error:
        print(f"bayescomp: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from bayescomp.distributed import in_torchrun_worker, run_worker

    if in_torchrun_worker():  # a rank of `bayescomp run --nproc N`: leave the process group cleanly, every path
        run_worker(main)
    sys.exit(main())
