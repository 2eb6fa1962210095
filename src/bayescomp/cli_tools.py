"""Command line of the tools around a run: ``bayescomp data download`` and ``bayescomp bench``.

Kept apart from :mod:`bayescomp.cli`, which registers these subcommands and dispatches to :func:`cmd_data` /
:func:`cmd_bench`.
"""

from __future__ import annotations

import argparse

from bayescomp.cli_help import DefaultsHelpFormatter


def add_data_bench_parsers(sub) -> None:
    """The ``data download`` and ``bench`` subcommands."""
    fmt = DefaultsHelpFormatter
    data = sub.add_parser("data", help="fetch the built-in data sets where no local copy exists", formatter_class=fmt)
    dsub = data.add_subparsers(dest="data_command", required=True)
    down = dsub.add_parser("download", help="download, verify (same MD5s as the loader) and unpack data sets; "
                                            "nothing is fetched where the local copy exists", formatter_class=fmt)
    down.add_argument("names", nargs="+", metavar="NAME", help="mnist, fashion-mnist, cifar10")
    down.add_argument("--data-dir", default=None,
                      help="folder to fill (default: $BAYESCOMP_DATA, else ~/.cache/bayescomp/data; "
                           "../shared/data is used as is when it holds the files)")
    down.add_argument("--mirror", default=None,
                      help="base URL of a mirror laid out as URL/<folder>/<file> (default: $BAYESCOMP_MIRROR, "
                           "else each data set's canonical public mirror)")
    down.add_argument("--retries", type=int, default=4,
                      help="further attempts after a network error")
    bench = sub.add_parser("bench", help="latency of a compressed model (and its dense zoo architecture) in eager "
                                         "PyTorch and onnxruntime at batch 1 and 256", formatter_class=fmt)
    bench.add_argument("path", help="a run directory (its compressed.bcz) or a .bcz file")
    bench.add_argument("--rounds", type=int, default=5,
                       help="interleaved timing rounds, median over them")
    bench.add_argument("--threads", type=int, default=None,
                       help="intra-op threads for both runtimes (default: torch's current number)")
    bench.add_argument("--input-shape", default=None,
                       help="C,H,W without the batch, for a file that does not record its data set")
    bench.add_argument("--no-onnx", action="store_true", help="time eager PyTorch only (default: both runtimes)")
    bench.add_argument("--json", action="store_true", help="print the JSON instead of markdown")


def cmd_data(args: argparse.Namespace) -> int:
    """Download and verify the named built-in data sets."""
    from bayescomp.download import download_dataset

    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    for name in args.names:
        download_dataset(name, args.data_dir, args.mirror, retries=args.retries)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time a compressed file in eager PyTorch and onnxruntime (issue 19, item 5)."""
    import json

    from bayescomp.runtime import bench_file, format_bench

    if args.rounds < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError(f"--rounds and --threads must be at least 1, got {args.rounds} and {args.threads}")
    result = bench_file(args.path, rounds=args.rounds, threads=args.threads, input_shape=args.input_shape,
                        onnx=not args.no_onnx)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0
