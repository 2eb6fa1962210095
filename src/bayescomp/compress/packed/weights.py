"""Linear/Conv2d weights: the value codec (packed grid codes or float32) and the three weight encodings.

A weight is written in whichever of ``dense``, ``sparse_mask`` and ``sparse_gaps`` is smallest (ties go to the
earlier); the sparse ones store positions (:mod:`bayescomp.compress.packed.sparse`) then the non-zero values.
Codes are ``floor(w / step + 0.5)`` as in :func:`bayescomp.compress.precision.quantize_fixed_point`, so a
model already on its grid (Louizos et al. 2017, Sec. 5) comes back bit for bit. Layout: docs/file-format.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bayescomp.compress.packed.bits import (
    bits_needed, dequantize_codes, pack_uint, packed_bytes, quantize_codes, unpack_uint,
)
from bayescomp.compress.packed.blobs import blob as blob_of
from bayescomp.compress.packed.format import ENCODINGS, MAX_BITS, Fail, QuantSpec
from bayescomp.compress.packed.sparse import POSITION_CODECS


@dataclass
class WeightPlan:
    """A Linear/Conv2d weight ready to write: its entries, non-zero positions and every encoding's size.

    Kept apart from the writing so that :func:`sparse_weight_bytes` gives the exact blob size without packing.
    """

    shape: list[int]
    step: float | None  # float32 grid step, or None for raw float32 values
    flat: np.ndarray  # int64 codes (quantised) or float32 values, row-major
    positions: np.ndarray  # sorted flat indices of the non-zero entries
    dense_bits: int  # bits per code of the dense encoding (32 for float32)
    dense_low: int  # min code of the dense encoding
    value_bits: int  # bits per non-zero value of the sparse encodings (32 for float32)
    value_low: int  # min non-zero code
    sizes: dict[str, int]  # encoding -> bytes of the weight blob
    encoding: str

    @property
    def nnz(self) -> int:
        return int(self.positions.size)


def _codes_range(codes: np.ndarray) -> tuple[int, int]:
    """(minimum code, bits for the codes shifted by it); (0, 1) when there are none."""
    if not codes.size:
        return 0, 1
    low = int(codes.min())
    return low, bits_needed(int(codes.max()) - low)


def plan_weight(weight: torch.Tensor, step: float | None) -> WeightPlan:
    """Codes/values, non-zero positions and the byte size of each encoding; picks the smallest encoding.

    Raises:
        ValueError: the weight cannot be quantised at ``step`` (NaN/inf, or more than ``MAX_BITS`` bits).
    """
    if step is None:
        flat = weight.detach().to(torch.float32).cpu().reshape(-1).numpy()
        positions = np.flatnonzero(flat != 0)  # -0.0 is a zero (pruning by multiplication leaves -0.0)
        dense_bits = value_bits = 32
        dense_low = value_low = 0
        value_bytes, dense_bytes = 4 * positions.size, 4 * flat.size
    else:
        step = float(np.float32(step))
        flat = quantize_codes(weight, step)
        dense_low, dense_bits = _codes_range(flat)
        if dense_bits > MAX_BITS:
            raise ValueError(f"step {step} needs {dense_bits} bits per weight (more than {MAX_BITS}); "
                             "use a coarser step")
        positions = np.flatnonzero(flat)
        value_low, value_bits = _codes_range(flat[positions])
        value_bytes = packed_bytes(positions.size, value_bits)
        dense_bytes = packed_bytes(flat.size, dense_bits)
    positions = positions.astype(np.int64, copy=False)
    sizes = {"dense": dense_bytes}
    for name, codec in POSITION_CODECS.items():
        sizes[name] = codec.size(flat.size, positions) + value_bytes
    encoding = min(ENCODINGS, key=sizes.__getitem__)  # min keeps the first of equal sizes
    return WeightPlan(list(weight.shape), step, flat, positions, dense_bits, dense_low, value_bits, value_low,
                      sizes, encoding)


def encode_values(codes_or_values: np.ndarray, step: float | None, low: int, bits: int,
                  info: dict[str, Any]) -> bytes:
    """Grid codes shifted by ``low`` and packed at ``bits`` (recording them in ``info``), or raw float32."""
    if step is None:
        return codes_or_values.astype("<f4", copy=False).tobytes()
    info.update(bits=bits, offset_code=low, step=step)
    return pack_uint(codes_or_values - low, bits)


def value_bits(entry: dict[str, Any], fail: Fail) -> int:
    """Bits per stored value of a weight entry (32 for float32), validated."""
    if entry["dtype"] != "packed":
        return 32
    bits = int(entry["bits"])
    if not 1 <= bits <= MAX_BITS:
        raise fail(f"invalid bit width {bits}")
    return bits


def decode_values(blob: memoryview, count: int, entry: dict[str, Any], fail: Fail, what: str) -> np.ndarray:
    """``count`` float32 values from a packed-code or float32 blob that must have exactly the right length."""
    bits = value_bits(entry, fail)
    expected = packed_bytes(count, bits) if entry["dtype"] == "packed" else 4 * count
    if len(blob) != expected:
        raise fail(f"{what} of {count} values at {bits} bits has {len(blob)} bytes, expected {expected}")
    if entry["dtype"] != "packed":
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)
    codes = unpack_uint(bytes(blob), count, bits).astype(np.int64) + int(entry["offset_code"])
    return dequantize_codes(codes, float(entry["step"]))


def encode_weight(plan: WeightPlan) -> tuple[bytes, dict[str, Any]]:
    """The blob and header fields (without offset/length) of a weight in its chosen encoding.

    Dense entries keep exactly the version-1 fields (plus ``encoding`` and ``nnz``), so the two versions
    differ only where sparsity is used.
    """
    info: dict[str, Any] = {"dtype": "packed" if plan.step is not None else "float32", "shape": plan.shape}
    if plan.encoding == "dense":
        data = encode_values(plan.flat, plan.step, plan.dense_low, plan.dense_bits, info)
        info.update(encoding="dense", nnz=plan.nnz)
        return data, info
    value_data = encode_values(plan.flat[plan.positions], plan.step, plan.value_low, plan.value_bits, info)
    index_data, index_info = POSITION_CODECS[plan.encoding].encode(plan.flat.size, plan.positions)
    info.update(index_info)
    info.update(encoding=plan.encoding, nnz=plan.nnz, index_length=len(index_data))
    data = index_data + value_data
    assert len(data) == plan.sizes[plan.encoding], (plan.encoding, len(data), plan.sizes)
    return data, info


def weight_encoding(entry: dict[str, Any], version: int, fail: Fail) -> str:
    """The encoding of a weight entry, checked against the file version."""
    encoding = entry.get("encoding", "dense")
    if encoding not in ENCODINGS:
        raise fail(f"unknown weight encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if version < 2 and encoding != "dense":
        raise fail(f"weight encoding {encoding!r} in a version-{version} file (which holds only dense "
                   "weights)")
    if entry.get("dtype") not in ("packed", "float32"):
        raise fail(f"unknown weight dtype {entry.get('dtype')!r}")
    return encoding


def decode_weight(data: memoryview, entry: dict[str, Any], fail: Fail, version: int,
                  expected_shape: list[int]) -> torch.Tensor:
    """Decode a Linear/Conv2d weight in any encoding to the same float32 tensor the dense encoding gives."""
    encoding = weight_encoding(entry, version, fail)
    shape = [int(s) for s in entry["shape"]]
    if shape != expected_shape:  # checked before decoding, so a bad header cannot make us allocate wildly
        raise fail(f"weight of shape {shape} does not fit the module (expects {expected_shape})")
    count = math.prod(shape)
    blob = blob_of(data, entry, fail)
    if encoding == "dense":
        flat = decode_values(blob, count, entry, fail, "dense weight blob")
        if "nnz" in entry and int(entry["nnz"]) != int(np.count_nonzero(flat)):
            raise fail(f"dense weight has {int(np.count_nonzero(flat))} non-zero entries, header says "
                       f"nnz = {int(entry['nnz'])}")
        return torch.from_numpy(flat).reshape(shape)
    nnz, index_length = int(entry["nnz"]), int(entry["index_length"])
    if not 0 <= nnz <= count:
        raise fail(f"nnz = {nnz} is out of range for a weight of {count} entries")
    if not 0 <= index_length <= len(blob):
        raise fail(f"index_length = {index_length} is out of range for a {len(blob)}-byte weight blob")
    positions = POSITION_CODECS[encoding].decode(blob[:index_length], count, nnz, entry, fail)
    values = decode_values(blob[index_length:], nnz, entry, fail, "sparse value blob")
    flat = np.zeros(count, dtype=np.float32)
    flat[positions] = values
    return torch.from_numpy(flat).reshape(shape)


def sparse_weight_bytes(weight: torch.Tensor, step: float | None) -> int:
    """Bytes the weight's blob takes in a packed file, in the encoding :func:`save_packed` would choose.

    ``step`` is the quantisation step (as in :class:`QuantSpec`), or ``None`` for a float32 weight. The
    header entry (a few dozen bytes of JSON) is not included. Reports use this to state the file cost of a
    sparse layer without writing a file.
    """
    if step is not None:
        step = QuantSpec(step).step
    plan = plan_weight(weight, step)
    return plan.sizes[plan.encoding]
