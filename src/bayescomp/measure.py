"""Measurements of a model that the report prints: weights, parameters, FLOPs, latency and file sizes.

Definitions (the same everywhere in bayescomp):

* **weights** = entries of the weight tensors of Linear/Conv2d layers, biases excluded (as in the papers);
* **FLOPs** = multiply-accumulates (MACs) of Linear and Conv2d layers for one example; activations, pooling,
  batch norm and biases are not counted;
* **latency** = wall-clock time of one CPU float32 forward pass in eval mode under ``torch.inference_mode``;
* **dense file** = bytes of ``torch.save(model.state_dict())``, the reference the packed file is compared to;
* **CSR accounting (values + indices)** = the bits of the Linear/Conv2d weights stored in compressed sparse
  row format (non-zero values, their column indices and the row pointers; see :func:`csr_storage_bits`), the
  storage measure of Han et al. (Deep Compression) and of the Sparse Variational Dropout comparisons.

Bayesian layers that are not subclasses of ``nn.Linear``/``nn.Conv2d`` are recognised by duck typing: a leaf
module with ``in_features``/``out_features`` counts as a linear layer, one with ``in_channels``,
``out_channels`` and ``kernel_size`` as a convolution; their weight tensor is ``weight`` or, failing that,
``weight_mu``.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bayescomp.compress.macs import _layer_kind, _weight_of, count_flops  # noqa: F401  (re-exported)
from bayescomp.compress.storage import compression_csr, csr_storage_bits  # noqa: F401  (re-exported)


def count_weights(model: nn.Module) -> int:
    """Entries of the Linear/Conv2d weight tensors (biases and every other parameter excluded)."""
    total = 0
    for module in model.modules():
        if _layer_kind(module) is not None:
            weight = _weight_of(module)
            total += weight.numel() if weight is not None else 0
    return total


def count_nonzero_weights(model: nn.Module) -> int:
    """Non-zero entries of the Linear/Conv2d weight tensors (biases and every other parameter excluded).

    Uses the same layers and tensors as :func:`count_weights`; ``-0.0`` is zero. For a Bayesian layer this
    counts the non-zeros of its ``weight``/``weight_mu`` tensor as it is, so apply any pruning mask first.
    """
    total = 0
    for module in model.modules():
        if _layer_kind(module) is not None:
            weight = _weight_of(module)
            total += int(torch.count_nonzero(weight.detach())) if weight is not None else 0
    return total


def count_parameters(model: nn.Module) -> int:
    """Entries of all parameters (weights, biases, BatchNorm affine, any variational parameters)."""
    return sum(p.numel() for p in model.parameters())


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, repeats: int = 50,
                    warmup: int = 10, num_threads: int | None = None, min_time_s: float = 0.0,
                    max_time_s: float | None = 3.0) -> dict[str, Any]:
    """Time forward passes on CPU in float32 (eval mode, ``torch.inference_mode``, random input in [0, 1]).

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones (``time.perf_counter``), continuing while
    their total is under ``min_time_s``. To keep slow models bounded, timing stops early once it has spent
    ``max_time_s`` seconds (after at least 3 passes) and warm-up once it has spent a third of that;
    ``max_time_s=None`` forces exactly the requested counts. ``num_threads`` sets torch's intra-op threads for
    the measurement only; the previous value, and the model's training flag, are restored afterwards.

    Returns:
        ``{"batch_size", "median_ms", "p10_ms", "p90_ms", "repeats" (timed passes actually run), "threads",
        "device": "cpu", "dtype": "float32"}``.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, {repeats}, "
                         f"{warmup}")
    previous_threads = torch.get_num_threads()
    was_training = model.training
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((batch_size, *input_shape), generator=generator, dtype=torch.float32)
    times: list[float] = []
    try:
        if num_threads is not None and num_threads != previous_threads:
            torch.set_num_threads(int(num_threads))
        threads = torch.get_num_threads()
        model.eval()
        with torch.inference_mode():
            warm_start = time.perf_counter()
            for _ in range(warmup):
                model(x)
                if max_time_s is not None and time.perf_counter() - warm_start > max_time_s / 3:
                    break
            spent = 0.0
            while len(times) < repeats or spent < min_time_s:
                start = time.perf_counter()
                model(x)
                elapsed = time.perf_counter() - start
                times.append(elapsed)
                spent += elapsed
                if max_time_s is not None and spent > max_time_s and len(times) >= min(3, repeats):
                    break
    finally:
        model.train(was_training)
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    ms = np.asarray(times) * 1e3
    return {
        "batch_size": int(batch_size),
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "repeats": len(times),
        "threads": threads,
        "device": "cpu",
        "dtype": "float32",
    }


def file_size(path: str | os.PathLike) -> int:
    """Size of a file in bytes."""
    return os.path.getsize(path)


def state_dict_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (the float32 "dense file" reference), written to memory."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


__all__ = [
    "compression_csr", "count_flops", "count_nonzero_weights", "count_parameters", "count_weights",
    "csr_storage_bits", "file_size", "measure_latency", "state_dict_size_bytes",
]
