"""Command line of the conditional hypernetwork: ``bayescomp hyper train`` and ``bayescomp hyper generate``.

Kept apart from :mod:`bayescomp.cli` (which registers these subcommands and dispatches to :func:`cmd_hyper`) so
that no CLI file grows past a screenful of options; ``KEY=VALUE`` option parsing lives here too and is shared with
``bayescomp run --prior-option``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bayescomp.cli_help import DATA_DIR_DEFAULT, DefaultsHelpFormatter
from bayescomp.models import MODELS
from bayescomp.validate import check_config_values


def add_hyper_parser(sub) -> None:
    """The ``hyper`` subcommand and its ``train`` / ``generate`` subcommands; the training defaults shown are those of
    :class:`~bayescomp.hyper.pipeline.HyperRunConfig`."""
    from bayescomp.hyper.pipeline import HyperRunConfig

    fmt, defaults = DefaultsHelpFormatter, HyperRunConfig()
    hyper = sub.add_parser("hyper", help="conditional compression: train a Bayesian hypernetwork once, then generate "
                                         "a small network for any class subset / compute budget in milliseconds",
                           formatter_class=fmt)
    hsub = hyper.add_subparsers(dest="hyper_command", required=True)
    train = hsub.add_parser("train", help="train and calibrate a hypernetwork (resumable)", formatter_class=fmt)
    train.add_argument("--model", default=defaults.model, help=f"zoo model: {', '.join(sorted(MODELS))}")
    train.add_argument("--data", default=None, help="data set (default: the model's usual data)")
    train.add_argument("--run-dir", default=None, help="output directory (default: runs/hyper_<model>_<data>)")
    train.add_argument("--data-dir", default=None, help=f"folder with the data sets (default: {DATA_DIR_DEFAULT})")
    train.add_argument("--seed", type=int, default=defaults.seed, help="random seed (data split, order, noise)")
    schedule = defaults.train
    train.add_argument("--epochs", type=int, default=schedule.epochs, help="training epochs")
    train.add_argument("--lr", type=float, default=schedule.lr,
                       help=f"Adam learning rate ({schedule.lr_schedule} schedule)")
    train.add_argument("--batch-size", type=int, default=schedule.batch_size, help="mini-batch size")
    train.add_argument("--kl-warmup", type=float, default=schedule.kl_warmup_epochs,
                       help="epochs of linear KL warm-up from 0 to 1")
    train.add_argument("--train-subset", type=int, default=None, help="use only this many training examples")
    train.add_argument("--test-subset", type=int, default=None, help="use only this many test examples")
    train.add_argument("--val-size", type=int, default=defaults.val_size,
                       help="validation examples carved from the training set")
    train.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="set a field of HyperConfig, e.g. --option factorization=input --option budget_power=2")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--restart", action="store_true", help="discard an existing run in --run-dir")
    gen = hsub.add_parser("generate", help="generate the compressed network for a context", formatter_class=fmt)
    gen.add_argument("hyper", help="a hypernetwork run directory or its hyper.pt")
    gen.add_argument("--classes", required=True, help="comma-separated class indices, e.g. 0,3,7")
    gen.add_argument("--budget", type=float, default=1.0,
                     help="largest fraction of the dense network's multiply-accumulates, in (0, 1]")
    gen.add_argument("--out", required=True, help="output directory (compressed.bcz, report.json, report.md)")
    gen.add_argument("--data-dir", default=None, help="folder with the data sets (default: the training run's)")
    gen.add_argument("--no-latency", action="store_true", help="skip the latency measurement")


def parse_options(items: list[str], config_cls, flag: str = "--option") -> dict:
    """``KEY=VALUE`` strings -> fields of ``config_cls`` (values parsed as JSON where possible: numbers,
    true/false), with a clear error for unknown keys."""
    from dataclasses import fields

    known = {f.name for f in fields(config_cls)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    check_config_values(config_cls, out, flag)  # types and ranges, before any work starts
    return out


def cmd_hyper(args: argparse.Namespace) -> int:
    """Run ``bayescomp hyper train`` or ``bayescomp hyper generate``."""
    from dataclasses import replace

    from bayescomp.hyper.context import parse_classes
    from bayescomp.hyper.model import HyperConfig
    from bayescomp.hyper.pipeline import HyperRunConfig, generate_run, train_run
    from bayescomp.report import render_generated_markdown

    if args.hyper_command == "train":
        if args.model not in MODELS:
            raise ValueError(f"unknown model {args.model!r}; known models: {', '.join(sorted(MODELS))}")
        data = args.data or MODELS[args.model].default_data
        config = HyperRunConfig(model=args.model, data=data, seed=args.seed, data_dir=args.data_dir,
                                val_size=args.val_size, train_subset=args.train_subset, test_subset=args.test_subset,
                                hyper=HyperConfig(**parse_options(args.option, HyperConfig)))
        changes = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                     "kl_warmup_epochs": args.kl_warmup, "seed": args.seed}.items() if v is not None}
        config.train = replace(config.train, **changes)
        run_dir = Path(args.run_dir or f"runs/hyper_{args.model}_{data}")
        train_run(config, run_dir, progress=not args.no_progress, restart=args.restart)
        print(f"hypernetwork: {run_dir / 'hyper.pt'}  (next: bayescomp hyper generate {run_dir} --classes 0,3,7 "
              "--budget 0.5 --out runs/generated)")
        return 0
    report = generate_run(args.hyper, parse_classes(args.classes), args.budget, args.out,
                          latency=not args.no_latency, data_dir=args.data_dir)
    print(render_generated_markdown(report))
    print(f"compressed model: {Path(args.out) / 'compressed.bcz'}")
    return 0
