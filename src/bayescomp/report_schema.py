"""The one schema of a run's report (``report.json``): a TypedDict read by the report, the benchmarks and the tests.

:func:`bayescomp.report.build_report` returns a :class:`Report`; the pipeline adds the keys marked ``NotRequired``
that depend on the run (latency when measured, plots when drawn, DDP, a method's ``report_extras``).
:func:`bayescomp.report.load_report` refuses a file that lacks a required key (:data:`REQUIRED_KEYS`, derived from
the TypedDict so the two cannot drift apart) and :func:`check_report` checks value types against the annotations
(issue 17, item 7: the schema used to be written three times, as key lists in the report, the benchmarks and the
tests). The ratios are defined in :mod:`bayescomp.report`.
"""

import types
import typing
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, Union


class CoupledGroup(TypedDict):
    """One root of the dependency graph's coupled channel groups (residual nets) and how many of them stay."""

    root: str
    channels: int
    kept: int


class TradeoffPoint(TypedDict):
    """Error of the masked posterior mean at one global threshold on the group statistic."""

    threshold: float
    weights_kept: int
    compression_architecture: float
    val_error_pct: float
    test_error_pct: float
    flops: NotRequired[int]  # multiply-accumulates of the pruned network (graph models)


class Report(TypedDict):
    """What ``bayescomp run`` / :func:`bayescomp.run` writes to ``report.json`` (errors in percent, sizes in bytes,
    FLOPs as multiply-accumulates per example, times in seconds)."""

    model: str
    data: str
    method: str
    seed: int
    test_error_pct: float  # the shipped (pruned and quantised) model
    test_error_pct_pruned: float
    test_error_pct_bayes: float | None  # None where the method has no posterior (magnitude)
    dense_test_error_pct: float
    val_error_pct_bayes: float | None
    architecture_dense: str  # "784-300-100-10"
    kept_architecture: str
    layers: list[str]
    thresholds: list[float]
    compression_path: str  # "chain" or "graph"
    coupled_groups: list[CoupledGroup] | None  # graph path only
    weights_dense: int
    weights_kept: int
    kept_weight_fraction: float
    compression_architecture: float
    weights_nonzero: int
    compression_nonzero: float
    compression_csr: float
    compression_csr_bits: float
    compression_bits: float
    compression_file: float
    file_bytes_dense: int
    file_bytes_compressed: int
    bits_per_layer: list[int]
    significand_bits_per_layer: list[int]
    exponent_bits: int | None
    flops_dense: int
    flops_compressed: int
    flops_compressed_nonzero: int
    epochs: int
    dense_epochs: int
    finetune_epochs: int
    epoch_s_mean: float
    n_train: int
    n_val: int
    n_test: int
    config: dict[str, Any]  # RunConfig.to_dict(): repeat the run with `bayescomp run --config run.json`
    command: str
    git_commit: str | None
    device: str
    torch_threads: int
    dense_block_share: float
    nonzero_blocks: int
    blocks_per_nonzero: float
    mean_row_run: float
    neurons_removed: int
    regularity: dict[str, Any]
    calibration: dict[str, Any]
    tradeoff_curve: list[TradeoffPoint]
    search_path: list[dict[str, Any]]
    history: list[dict[str, Any]]  # one dict per training epoch
    wall_time_s: float
    posterior_log_alpha: NotRequired[dict[str, Any] | None]  # groups above log alpha -3, 0, 3 (report.py)
    # written unless --no-latency
    latency_ms: NotRequired[dict[str, Any]]
    block_format: NotRequired[dict[str, Any]]
    runtime_latency: NotRequired[dict[str, Any]]
    # added by the pipeline after build_report
    test_error_pct_pruned_before_finetune: NotRequired[float | None]
    finetune_validation: NotRequired[dict[str, Any] | None]  # val error before/after fine-tuning, kept or undone
    noise_source: NotRequired[str]  # where the CPU training noise came from: "philox" or "torch" (bayescomp.noise)
    compiled_step: NotRequired[bool]  # whether the Bayesian training steps were compiled (bayescomp.compiled_step)
    training: NotRequired[dict[str, Any]]
    ddp: NotRequired[dict[str, Any]]
    plots: NotRequired[list[str]]
    # method report extras (methods/): Turbo-VBI, self-compression
    module_b_sweep_s: NotRequired[float]
    epoch_s: NotRequired[float]
    self_compression_rounds: NotRequired[list[Any]]
    test_error_pct_density: NotRequired[float]


#: Keys every report of ``bayescomp run`` holds, in the order build_report writes them.
REQUIRED_KEYS: tuple[str, ...] = tuple(k for k in Report.__annotations__ if k in Report.__required_keys__)
#: Every key the schema knows (required and optional), in schema order.
REPORT_KEYS: tuple[str, ...] = tuple(Report.__annotations__)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (int is accepted for float; bool is never a number)."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    if typing.is_typeddict(hint):
        return isinstance(value, dict) and not _problems(value, hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _problems(report: Mapping[str, Any], schema: type) -> list[str]:
    hints = typing.get_type_hints(schema)  # NotRequired[...] stripped
    missing = [f"missing key {key!r}" for key in hints if key in schema.__required_keys__ and key not in report]
    wrong = [f"{key!r} is {type(report[key]).__name__} {str(report[key])[:40]!r}, expected {hint}"
             for key, hint in hints.items() if key in report and not _matches(report[key], hint)]
    return missing + wrong


def check_report(report: Any) -> list[str]:
    """Every way ``report`` departs from :class:`Report` (missing required keys, values of the wrong type);
    empty when it fits. Keys the schema does not name are allowed (a registered method may add its own)."""
    if not isinstance(report, Mapping):
        return [f"a report is a JSON object, got {type(report).__name__}"]
    return _problems(report, Report)
