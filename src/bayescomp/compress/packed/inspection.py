"""Reading how a packed file stores each layer (bits, encodings, sizes) without building the model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from bayescomp.compress.packed.container import read_checked
from bayescomp.compress.packed.format import DECODE_ERRORS, Fail, PackedFormatError, PathLike, module_fail
from bayescomp.compress.packed.weights import decode_weight, value_bits, weight_encoding


def packed_layer_bits(path: PathLike) -> dict[int, int]:
    """Bits per stored value of each quantised layer (module index -> bits), without building the model.

    For a sparse encoding these are the bits of the non-zero codes (shifted by their minimum).
    """
    path = Path(path)
    header, _, _ = read_checked(path)
    out: dict[int, int] = {}
    for index, spec in enumerate(header["modules"]):
        weight = spec.get("blobs", {}).get("weight", {}) if isinstance(spec, dict) else {}
        if weight.get("dtype") == "packed":
            out[index] = int(weight["bits"])
    return out


def _layer_info(entry: dict[str, Any], data: memoryview, fail: Fail, version: int) -> dict[str, Any]:
    """What :func:`packed_layer_info` reports for one weight entry."""
    encoding = weight_encoding(entry, version, fail)
    shape = [int(s) for s in entry["shape"]]
    length = int(entry["length"])
    index_bytes = int(entry["index_length"]) if encoding != "dense" else 0
    if "nnz" in entry:
        nnz = int(entry["nnz"])
    else:  # version 1 did not record it: count from the decoded weight
        nnz = int(torch.count_nonzero(decode_weight(data, entry, fail, version, shape)))
    quantized = entry["dtype"] == "packed"
    return {
        "encoding": encoding,
        "quantized": quantized,
        "bits": value_bits(entry, fail),
        "step": float(entry["step"]) if quantized else None,
        "shape": shape,
        "numel": math.prod(shape),
        "nnz": nnz,
        "weight_bytes": length,
        "index_bytes": index_bytes,
        "value_bytes": length - index_bytes,
        "gap_bits": int(entry["gap_bits"]) if encoding == "sparse_gaps" else None,
    }


def packed_layer_info(path: PathLike) -> dict[int, dict[str, Any]]:
    """How each Linear/Conv2d weight of a packed file is stored, without building the model (module index ->).

    Per layer: ``encoding`` (``"dense"``, ``"sparse_mask"`` or ``"sparse_gaps"``), ``quantized``, ``bits``
    (bits per stored value: the packed code width, or 32 for float32), ``step`` (``None`` if not quantised),
    ``shape``, ``numel``, ``nnz`` (non-zero entries, as defined in docs/file-format.md), ``weight_bytes``
    (the whole weight blob), ``index_bytes`` (its mask/gap part, 0 when dense), ``value_bytes`` and
    ``gap_bits`` (``None`` unless gap-coded). Biases are not included.

    Raises:
        PackedFormatError: as :func:`load_packed` for an unreadable file or a malformed weight entry.
    """
    path = Path(path)
    header, data, version = read_checked(path)
    out: dict[int, dict[str, Any]] = {}
    for index, spec in enumerate(header["modules"]):
        if not isinstance(spec, dict) or spec.get("type") not in ("Linear", "Conv2d"):
            continue
        fail = module_fail(path, index, spec)
        try:
            out[index] = _layer_info(spec["blobs"]["weight"], data, fail, version)
        except PackedFormatError:
            raise
        except DECODE_ERRORS as error:
            raise fail(f"malformed weight entry ({type(error).__name__}: {error})") from error
    return out
