"""Constants, the error type and the quantisation spec of the packed format (docs/file-format.md).

Kept in one small module that every other part of :mod:`bayescomp.compress.packed` imports, so the numbers
that define the format (magic, versions, encodings, limits) are written down exactly once.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

MAGIC = b"BCPK"
FORMAT_VERSION = 2  # flat Sequential files; files with a module tree are version 3
TREE_VERSION = 3
TENSOR_VERSION = 4  # a module tree one of whose nodes stores its own parameters or buffers
READABLE_VERSIONS = (1, 2, 3, 4)  # 1: dense weights only; 3: a module tree; 4: tree nodes with own tensors
RESERVED_KEY = "_packed"
ENCODINGS = ("dense", "sparse_mask", "sparse_gaps")  # in order of preference when sizes tie
PREAMBLE = struct.Struct("<4sHIQ")  # magic, version, header_len, data_len
CRC = struct.Struct("<I")
MAX_BITS = 62

PathLike = str | os.PathLike


class PackedFormatError(Exception):
    """A packed file cannot be read: wrong magic, unsupported version, truncated, corrupted or malformed."""


Fail = Callable[[str], PackedFormatError]
"""An error factory whose messages name the file and the module being decoded."""

DECODE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError)
"""What a malformed (but CRC-valid) header entry raises while being decoded; turned into PackedFormatError."""


def module_fail(path: Any, index: int, spec: Any) -> Fail:
    """An error factory whose messages name the file and the module."""
    def fail(message: str) -> PackedFormatError:
        name = spec.get("type") if isinstance(spec, dict) else spec
        return PackedFormatError(f"{path}: module {index} ({name}): {message}")
    return fail


@dataclass
class QuantSpec:
    """Fixed-point quantisation of one layer's weight: integer multiples of ``step`` (e.g. 2**-t)."""

    step: float

    def __post_init__(self) -> None:
        step32 = float(np.float32(self.step))
        if not (math.isfinite(step32) and step32 > 0):
            raise ValueError(f"QuantSpec.step must be a positive finite float32 value, got {self.step!r}")
