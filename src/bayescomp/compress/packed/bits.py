"""Bit packing: non-negative integers stored densely at a fixed width, and the fixed-point codes of a weight.

The packed format's size on disk is the bit accounting of the papers (Louizos et al. 2017, Sec. 5: bits per
weight from the posterior variance) because every code is stored at the fewest bits that hold it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bayescomp.compress.packed.format import MAX_BITS

_CHUNK = 1 << 20  # weights packed per numpy call (a multiple of 8, so chunks end on byte boundaries)


def bits_needed(max_value: int) -> int:
    """The fewest bits (at least 1) that represent every integer in ``[0, max_value]``."""
    return max(1, int(max_value).bit_length())


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` values packed at ``bits`` bits each (padded to a whole byte)."""
    return (count * bits + 7) // 8


def _container(bits: int) -> np.dtype:
    """The smallest big-endian unsigned integer type with at least ``bits`` bits."""
    for size in (1, 2, 4, 8):
        if bits <= 8 * size:
            return np.dtype(f">u{size}")
    raise ValueError(f"cannot pack {bits}-bit values")


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers densely at ``bits`` bits each (most significant bit first, no padding
    between values; the last byte is zero-padded)."""
    values = np.ascontiguousarray(values).ravel()
    dtype = _container(bits)
    width = 8 * dtype.itemsize
    parts = []
    for start in range(0, values.size, _CHUNK):
        chunk = values[start:start + _CHUNK].astype(dtype).view(np.uint8).reshape(-1, dtype.itemsize)
        matrix = np.unpackbits(chunk, axis=1)[:, width - bits:]  # (n, bits), most significant bit first
        parts.append(np.packbits(matrix.ravel()).tobytes())
    return b"".join(parts)


def unpack_uint(blob: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` integers of ``bits`` bits each, as uint64."""
    dtype = _container(bits)
    width = 8 * dtype.itemsize
    flat = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=count * bits)
    matrix = flat.reshape(count, bits)
    out = np.empty(count, dtype=np.uint64)
    for start in range(0, count, _CHUNK):
        part = matrix[start:start + _CHUNK]
        full = np.zeros((part.shape[0], width), dtype=np.uint8)
        full[:, width - bits:] = part
        out[start:start + _CHUNK] = np.packbits(full, axis=1).view(dtype).ravel()
    return out


def quantize_codes(weight: torch.Tensor, step: float) -> np.ndarray:
    """Integer grid codes ``floor(w / step + 0.5)`` in float32 arithmetic, as a flat int64 array."""
    w = weight.detach().to(torch.float32).cpu().reshape(-1)
    codes = torch.floor(w / float(np.float32(step)) + 0.5)
    if codes.numel():
        largest = float(codes.abs().max())  # NaN/inf propagate here
        if not math.isfinite(largest):
            raise ValueError("cannot quantise a weight tensor holding NaN or infinite values")
        if largest >= 2.0 ** MAX_BITS:
            raise ValueError(f"step {step} is too fine for weights up to {float(w.abs().max())}: "
                             f"the codes need more than {MAX_BITS} bits")
    return codes.to(torch.int64).numpy()


def dequantize_codes(codes: np.ndarray, step: float) -> np.ndarray:
    """``float32(code) * float32(step)`` (the loaded weight values)."""
    return codes.astype(np.float32) * np.float32(step)
