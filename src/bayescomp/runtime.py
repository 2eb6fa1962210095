"""Latency where users deploy: eager PyTorch and onnxruntime, dense and compressed, interleaved.

Per-operator overhead dominates small models in eager PyTorch, so a compressed model with far fewer FLOPs can gain
little there while an ahead-of-time runtime (onnxruntime, CPU provider) shows the saving. The report and
``bayescomp bench RUN_DIR|model.bcz`` time both runtimes with the same thread count and say which is faster.
onnxruntime is optional (extra ``export``): without it only eager PyTorch is timed and the result says so.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Runtimes timed by :func:`compare_runtimes`, in table order: eager PyTorch as given (NCHW), eager PyTorch with the
#: weights in channels-last (conv nets only), and onnxruntime's CPU provider.
EAGER_RUNTIMES = ("eager", "eager_channels_last")
RUNTIME_NAMES = {"eager": "eager PyTorch", "eager_channels_last": "eager PyTorch channels-last",
                 "onnxruntime": "onnxruntime"}


def onnx_sessions(models: dict[str, nn.Module], input_shape: tuple[int, ...], threads: int,
                   folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """ONNX export of each model (onnxruntime CPU provider, ``threads`` intra-op threads) and a note; on a
    machine without onnxruntime, or for a model the exporter refuses, no sessions and a note saying why."""
    from bayescomp import export

    try:
        import onnxruntime
    except ImportError:
        return {}, {"onnxruntime": None, "onnxruntime_note": "onnxruntime is not installed, so only eager PyTorch "
                    "was measured; pip install 'bayescomp[export]' to measure the ONNX runtime too"}
    example = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(1))
    sessions, diff = {}, 0.0
    try:
        for label, model in models.items():
            path = export.export_onnx(model.eval(), example, Path(folder) / f"{label}.onnx", exporter="torchscript")
            sessions[label] = export.onnx_session(path, threads)
            with torch.inference_mode():
                expected = model(example)
                gap = float((export.onnx_outputs(sessions[label], example) - expected).abs().max())
            if not gap <= 1e-4 * max(1.0, float(expected.abs().max())):
                raise export.ExportError(f"the ONNX outputs of the {label} model differ from PyTorch by {gap:.3g}")
            diff = max(diff, gap)
    except Exception as error:  # noqa: BLE001 - exporter and runtime errors vary; eager timing still stands
        return {}, {"onnxruntime": onnxruntime.__version__,
                    "onnxruntime_note": f"not measured: {type(error).__name__}: {error}"}
    return sessions, {"onnxruntime": onnxruntime.__version__, "onnx_max_abs_diff": diff}


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-D convolution, i.e. whether its memory format can matter."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def to_channels_last(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for CPU serving, with its 4-D weights in channels-last (NHWC) memory format.

    Same parameters, same outputs (up to float rounding), and the caller still passes NCHW input: PyTorch runs a
    convolution in channels-last when its weight is, and the layers after it (ReLU, pooling, batch norm) follow
    their input. On this project's CPUs oneDNN's NHWC convolution and pooling kernels were measured about 2x
    faster than the NCHW ones for LeNet-5 at batch 256 and 1.1-1.3x for ResNet-20, while a model of a few
    small layers at batch 1 can be slower; :func:`compare_runtimes` times both, so measure before choosing.
    """
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _runner(runtime: str, model: nn.Module | Any, x: torch.Tensor):
    """A no-argument callable running one forward pass of ``model`` (eager in either memory format, or an
    onnxruntime session)."""
    if runtime in EAGER_RUNTIMES:
        return lambda: model(x)
    name, feed = model.get_inputs()[0].name, x.numpy()
    return lambda: model.run(None, {name: feed})


def compare_runtimes(dense: nn.Module | None, compressed: nn.Module, input_shape: tuple[int, ...],
                     batch_sizes: tuple[int, ...] = (1, 256), rounds: int = 5, repeats: int = 300,
                     threads: int | None = None, onnx: bool = True, max_time_s: float = 1.0,
                     channels_last: bool = True) -> dict[str, Any]:
    """Median CPU float32 latency of the dense and compressed models in eager PyTorch and in onnxruntime.

    Per-operator overhead dominates small models in eager PyTorch, so a compressed model with far fewer FLOPs can
    gain little there while an ahead-of-time runtime shows the saving; users deploy with both. Every (runtime,
    model) pair is timed in each of ``rounds`` interleaved rounds (``repeats / rounds`` passes each, at most
    ``max_time_s`` per pair and round, 1/8 of the repeats at batch >= 64), and the figure is the median over rounds,
    so machine noise hits all pairs alike. onnxruntime uses the CPU provider with the same intra-op thread count
    as torch (``threads``, default torch's current). ``dense=None`` times the compressed model alone. For conv
    nets (``channels_last``, default on) eager PyTorch is timed a second time with each model's weights in
    channels-last (:func:`to_channels_last`; runtime ``"eager_channels_last"``), since which layout is faster
    depends on the model and the batch size.

    Returns ``{"median_ms": {runtime: {model: {"batch_<n>": ms}}}, "speedup": {runtime: {"batch_<n>": dense /
    compressed}}, "speedup_vs_dense_eager": {runtime: {...}}, "fastest": {"batch_<n>": "runtime compressed"},
    "threads", "rounds", "device", "dtype", "onnxruntime" (version or None), "onnxruntime_note" (why it is
    missing), "onnx_max_abs_diff"}``.
    """
    import tempfile

    if rounds < 1 or repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"need rounds >= 1, repeats >= 1 and batch sizes >= 1; got {rounds}, {repeats}, "
                         f"{batch_sizes}")
    previous = torch.get_num_threads()
    threads = int(threads or previous)
    models = {"compressed": compressed} if dense is None else {"dense": dense, "compressed": compressed}
    states = {label: model.training for label, model in models.items()}
    samples: dict[tuple[str, str, int], list[float]] = {}
    try:
        torch.set_num_threads(threads)
        for model in models.values():
            model.eval()
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            sessions, info = onnx_sessions(models, input_shape, threads, folder) if onnx else \
                ({}, {"onnxruntime": None, "onnxruntime_note": "onnxruntime not requested"})
            targets = {("eager", label): model for label, model in models.items()}
            if channels_last and any(has_convolutions(model) for model in models.values()):
                targets.update({("eager_channels_last", label): to_channels_last(model)
                                for label, model in models.items()})
            targets.update({("onnxruntime", label): session for label, session in sessions.items()})
            inputs = {b: torch.rand((b, *input_shape), generator=torch.Generator().manual_seed(0))
                      for b in batch_sizes}
            for _ in range(rounds):
                for batch in batch_sizes:
                    count = max(3, repeats // rounds // (8 if batch >= 64 else 1))
                    for (runtime, label), target in targets.items():
                        times = _timed(_runner(runtime, target, inputs[batch]), count, _warmup(batch, count),
                                       max_time_s)
                        samples.setdefault((runtime, label, batch), []).append(float(np.median(times)) * 1e3)
    finally:
        torch.set_num_threads(previous)
        for label, model in models.items():
            model.train(states[label])
    return _runtime_summary(samples, batch_sizes, threads, rounds, info)


def _warmup(batch: int, count: int) -> int:
    """Untimed passes before each timed run: one for large batches (a pass there is long enough to warm caches
    and allocators), else a fifth of the timed passes, at least 2."""
    return 1 if batch >= 64 else max(2, count // 5)


def _timed(fn, count: int, warmup: int, max_time_s: float) -> list[float]:
    """Seconds of ``count`` calls of ``fn`` after ``warmup`` untimed ones (stopping after ``max_time_s``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < count and sum(times) < max_time_s:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _runtime_summary(samples: dict, batch_sizes: tuple[int, ...], threads: int, rounds: int,
                     info: dict[str, Any]) -> dict[str, Any]:
    median: dict[str, dict[str, dict[str, float]]] = {}
    for (runtime, label, batch), values in samples.items():
        median.setdefault(runtime, {}).setdefault(label, {})[f"batch_{batch}"] = float(np.median(values))
    keys = [f"batch_{b}" for b in batch_sizes]
    out: dict[str, Any] = {"median_ms": median, "threads": threads, "rounds": rounds, "device": "cpu",
                           "dtype": "float32", **info}
    if all("dense" in per for per in median.values()):
        out["speedup"] = {rt: {k: per["dense"][k] / per["compressed"][k] for k in keys} for rt, per in median.items()}
        out["speedup_vs_dense_eager"] = {rt: {k: median["eager"]["dense"][k] / per["compressed"][k] for k in keys}
                                         for rt, per in median.items()}
    out["fastest"] = {k: min(((rt, label) for rt, per in median.items() for label in per),
                             key=lambda pair: median[pair[0]][pair[1]][k]) for k in keys}
    out["fastest"] = {k: f"{rt} {label}" for k, (rt, label) in out["fastest"].items()}
    return out


def format_runtime_latency(result: dict[str, Any]) -> list[str]:
    """Markdown lines for :func:`compare_runtimes`: one row per batch size, and which runtime/model is faster."""
    median = result["median_ms"]
    runtimes = [rt for rt in RUNTIME_NAMES if rt in median]
    columns = [(rt, label) for rt in runtimes for label in median[rt]]
    speedups = ["eager", "onnxruntime"] + [rt for rt in runtimes if rt not in ("eager", "onnxruntime")]
    lines = [(f"Latency by runtime (CPU, float32, {result['threads']} threads, median of {result['rounds']} "
              "interleaved rounds, ms):"), "",
             "| batch | " + " | ".join(f"{RUNTIME_NAMES[rt]} {label}" for rt, label in columns)
             + ("".join(f" | speed-up {RUNTIME_NAMES[rt].replace(' PyTorch', '')}"
                        for rt in speedups) + " | fastest |" if "speedup" in result else " | fastest |"),
             "|---" * (len(columns) + (len(speedups) + 2 if "speedup" in result else 2)) + "|"]
    for key in next(iter(median.values()))[columns[0][1]]:
        row = [f"{median[rt][label][key]:.3f}" for rt, label in columns]
        if "speedup" in result:
            row += [f"{result['speedup'][rt][key]:.1f}x" if rt in result["speedup"] else "-" for rt in speedups]
        runtime_key, _, label = result["fastest"][key].rpartition(" ")
        row.append(f"{RUNTIME_NAMES.get(runtime_key, runtime_key)} {label}")
        lines.append(f"| {key.removeprefix('batch_')} | " + " | ".join(row) + " |")
    if "onnxruntime_note" in result:
        lines += ["", f"onnxruntime: {result['onnxruntime_note']}"]
    elif "speedup_vs_dense_eager" in result:
        fast = result["speedup_vs_dense_eager"]["onnxruntime"]
        lines += ["", "compressed in onnxruntime vs dense in eager PyTorch: "
                  + ", ".join(f"{v:.1f}x at batch {k.removeprefix('batch_')}" for k, v in fast.items())]
    return lines


INT8_OPS = ("Gemm", "MatMul", "Conv")


def int8_dot_product_native() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8), read from the
    ``/proc/cpuinfo`` flags. Without one, onnxruntime multiplies uint8 activations by int8 weights with
    ``VPMADDUBSW``, whose 16-bit pairwise sums saturate for full-range weights (onnxruntime's quantization
    documentation), so the weights must then use 7 bits (``reduce_range``)."""
    from bayescomp.mixed_precision import _cpu_flags

    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_qdq_session(model: nn.Module, bits: dict[int, int], calibration: torch.Tensor, folder: str | Path,
                     threads: int = 1, reduce_range: bool | None = None) -> tuple[Any, list[str]]:
    """onnxruntime session of ``model`` with int8 QDQ (static, per-channel weights) only on the layers whose
    posterior bit width is <= 8 (``bits``: top-level module index -> bits, as stored in the packed file); their
    precision then fits int8 (Louizos et al. 2017, Sec. 5: bits from the posterior variance). Activations are
    calibrated on ``calibration`` (images as the model takes them). Returns the session and the quantised
    ONNX node names; ``(None, [])`` when no layer qualifies.

    ``reduce_range``: weights on 7 bits instead of 8. ``None`` (default) does so only on CPUs without an int8
    dot-product instruction (:func:`int8_dot_product_native`): measured on an AVX2-only CPU, full-range weights
    made a two-layer MLP's int8 output err by 23 % of its scale (saturation), 7-bit weights by 1.4 %.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from bayescomp import export

    folder = Path(folder)
    path = export.export_onnx(model.eval(), calibration[:2], folder / "float.onnx", exporter="torchscript")
    low = {int(i) for i, b in bits.items() if int(b) <= 8}
    nodes = [n.name for n in onnx.load(str(path)).graph.node
             if n.op_type in INT8_OPS and n.name.split("/")[1:2] and n.name.split("/")[1].isdigit()
             and int(n.name.split("/")[1]) in low]
    if not nodes:
        return None, []

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": b.numpy()} for b in calibration.split(64)])

        def get_next(self):
            return next(self.batches, None)

    target = folder / "int8_qdq.onnx"
    if reduce_range is None:
        reduce_range = not int8_dot_product_native()
    quantize_static(str(path), str(target), Reader(), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
                    per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return export.onnx_session(target, threads), nodes


def time_sessions(sessions: dict[str, Any], input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 256),
                  rounds: int = 5, repeats: int = 300, max_time_s: float = 1.0) -> dict[str, dict[str, float]]:
    """Median latency (ms) of onnxruntime sessions, interleaved in ``rounds`` as in :func:`compare_runtimes`."""
    samples: dict[tuple[str, int], list[float]] = {}
    inputs = {b: torch.rand((b, *input_shape), generator=torch.Generator().manual_seed(0)) for b in batch_sizes}
    for _ in range(rounds):
        for batch in batch_sizes:
            count = max(3, repeats // rounds // (8 if batch >= 64 else 1))
            for label, session in sessions.items():
                times = _timed(_runner("onnxruntime", session, inputs[batch]), count, _warmup(batch, count),
                               max_time_s)
                samples.setdefault((label, batch), []).append(float(np.median(times)) * 1e3)
    out: dict[str, dict[str, float]] = {}
    for (label, batch), values in samples.items():
        out.setdefault(label, {})[f"batch_{batch}"] = float(np.median(values))
    return out


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"--input-shape must be positive integers like 1,28,28 (no batch), got {text!r}")
    return shape


def bench_file(path: str | Path, rounds: int = 5, threads: int | None = None, input_shape: str | None = None,
               onnx: bool = True, repeats: int = 300) -> dict[str, Any]:
    """:func:`compare_runtimes` for a packed model (``model.bcz``, or a run directory's ``compressed.bcz``).

    When the file records the zoo model and data set it came from (every ``bayescomp run`` does), the dense
    model is that zoo architecture with fresh weights (latency does not depend on the weight values) and the
    input shape is the data set's; otherwise the compressed model is timed alone on ``input_shape`` ("C,H,W").
    """
    from bayescomp.compress.packed import load_packed
    from bayescomp.data import DATASETS
    from bayescomp.models import MODELS, create_model

    path = Path(path)
    file = path / "compressed.bcz" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no packed model there; give a .bcz file or a run directory holding "
                                "compressed.bcz (written by `bayescomp run`)")
    compressed, meta = load_packed(file)
    run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
    spec = DATASETS.get(run.get("data"))
    dense, dense_note = None, "none (the file does not name its zoo model; only the compressed model is timed)"
    if spec is not None and run.get("model") in MODELS:
        torch.manual_seed(0)
        dense = create_model(run["model"], spec.num_classes, spec.input_shape, spec.mean, spec.std)
        dense_note = f"zoo {run['model']} for {spec.name}, fresh weights (latency does not depend on their values)"
    if input_shape is not None:
        shape = _parse_shape(input_shape)
    elif spec is not None:
        shape = spec.input_shape
    else:
        raise ValueError(f"{file} does not record its data set; give --input-shape C,H,W")
    result = compare_runtimes(dense, compressed, shape, rounds=rounds, threads=threads, onnx=onnx, repeats=repeats)
    return {"file": str(file), "dense": dense_note, "input_shape": list(shape), **result}


def format_bench(result: dict[str, Any]) -> str:
    """The ``bayescomp bench`` printout."""
    head = [f"{result['file']} (input {tuple(result['input_shape'])}; dense reference: {result['dense']})", ""]
    return "\n".join(head + format_runtime_latency(result))


__all__ = ["bench_file", "compare_runtimes", "format_bench", "format_runtime_latency", "has_convolutions",
           "onnx_sessions", "time_sessions", "to_channels_last"]
