"""Where the non-zeros of a sparse weight lie: the two position codecs, each beside its decoder.

A weight pruned to single entries (Sparse Variational Dropout, Molchanov et al. 2017; Turbo-VBI, Xia et al.
2023) is cheaper stored as positions plus values. ``sparse_mask`` stores one bit per entry; ``sparse_gaps``
stores, for each non-zero, how many zeros precede it since the previous one, at one fixed width. The format
picks whichever is smaller per layer (see docs/file-format.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from bayescomp.compress.packed.bits import bits_needed, pack_uint, packed_bytes, unpack_uint
from bayescomp.compress.packed.format import Fail


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each non-zero entry: ``p_k - p_{k-1} - 1`` with ``p_{-1} = -1``."""
    return np.diff(positions, prepend=-1) - 1


def gap_bits_of(positions: np.ndarray) -> int:
    """The fixed width of the gap code (at least 1)."""
    return bits_needed(int(gaps_of(positions).max())) if positions.size else 1


# ------------------------------------------------------------------------------------------------ sparse_mask


def mask_bytes(count: int, positions: np.ndarray) -> int:
    return packed_bytes(count, 1)


def encode_mask(count: int, positions: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """A bitmask of ``count`` bits in ``np.packbits`` order, bit ``i`` set iff entry ``i`` is non-zero."""
    mask = np.zeros(count, dtype=bool)
    mask[positions] = True
    return np.packbits(mask).tobytes(), {}


def decode_mask(blob: memoryview, count: int, nnz: int, entry: dict[str, Any], fail: Fail) -> np.ndarray:
    """Sorted flat indices of the set bits; the count must match the header's ``nnz``."""
    if len(blob) != packed_bytes(count, 1):
        raise fail(f"mask of {count} bits has {len(blob)} bytes, expected {packed_bytes(count, 1)}")
    mask = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=count)
    positions = np.flatnonzero(mask)
    if positions.size != nnz:
        raise fail(f"mask marks {positions.size} non-zero entries, header says nnz = {nnz}")
    return positions.astype(np.int64, copy=False)


# ------------------------------------------------------------------------------------------------ sparse_gaps


def gaps_bytes(count: int, positions: np.ndarray) -> int:
    return packed_bytes(positions.size, gap_bits_of(positions))


def encode_gaps(count: int, positions: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The gaps packed at ``gap_bits = max(1, bit_length(max gap))``; the width goes to the header."""
    gap_bits = gap_bits_of(positions)
    return pack_uint(gaps_of(positions), gap_bits), {"gap_bits": gap_bits}


def decode_gaps(blob: memoryview, count: int, nnz: int, entry: dict[str, Any], fail: Fail) -> np.ndarray:
    """Positions from the gaps; refuses widths, lengths or sums that would run past the weight's end."""
    gap_bits = int(entry["gap_bits"])
    if not 1 <= gap_bits <= 64:
        raise fail(f"invalid gap width {gap_bits}")
    if len(blob) != packed_bytes(nnz, gap_bits):
        raise fail(f"{nnz} gaps at {gap_bits} bits have {len(blob)} bytes, expected "
                   f"{packed_bytes(nnz, gap_bits)}")
    gaps = unpack_uint(bytes(blob), nnz, gap_bits)
    # every gap <= count - 1 and (in float, overflow-free) their sum small enough before the exact int64 sum
    if nnz and (int(gaps.max()) > count - 1 or float(gaps.sum(dtype=np.float64)) + nnz > count + 1.0):
        raise fail(f"gaps run past the end of the {count}-entry weight")
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if nnz and int(positions[-1]) >= count:
        raise fail(f"gaps run past the end of the {count}-entry weight (last index {int(positions[-1])})")
    return positions


@dataclass(frozen=True)
class PositionCodec:
    """How one sparse encoding stores the non-zero positions: its size, its encoder and its decoder."""

    size: Callable[[int, np.ndarray], int]
    encode: Callable[[int, np.ndarray], tuple[bytes, dict[str, Any]]]
    decode: Callable[[memoryview, int, int, dict[str, Any], Fail], np.ndarray]


POSITION_CODECS: dict[str, PositionCodec] = {
    "sparse_mask": PositionCodec(mask_bytes, encode_mask, decode_mask),
    "sparse_gaps": PositionCodec(gaps_bytes, encode_gaps, decode_gaps),
}
