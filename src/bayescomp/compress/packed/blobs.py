"""The data section of a packed file: blobs laid back to back, each found through its header entry."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from bayescomp.compress.packed.format import Fail


class BlobWriter:
    """Collects the binary blobs of the data section and records where each one lies."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes, **info: Any) -> dict[str, Any]:
        """Append ``data``; returns its header entry (``offset``, ``length``, then the given fields)."""
        entry = {"offset": self.size, "length": len(data), **info}
        self.parts.append(data)
        self.size += len(data)
        return entry

    def add_float32(self, tensor: torch.Tensor) -> dict[str, Any]:
        """Append a tensor as raw little-endian float32."""
        array = tensor.detach().to(torch.float32).cpu().numpy().astype("<f4", copy=False)
        return self.add(array.tobytes(), dtype="float32", shape=list(tensor.shape))


def blob(data: memoryview, entry: dict[str, Any], fail: Fail) -> memoryview:
    """The bytes a header entry points at, refusing ranges outside the data section."""
    offset, length = int(entry["offset"]), int(entry["length"])
    if offset < 0 or length < 0 or offset + length > len(data):
        raise fail(f"blob [{offset}, {offset + length}) lies outside the {len(data)}-byte data section")
    return data[offset:offset + length]


def float32_tensor(data: memoryview, entry: dict[str, Any], fail: Fail) -> torch.Tensor:
    """Decode a raw float32 blob (written by :meth:`BlobWriter.add_float32`) of exactly the declared size."""
    shape = [int(s) for s in entry["shape"]]
    raw = blob(data, entry, fail)
    count = math.prod(shape)
    if len(raw) != 4 * count:
        raise fail(f"float32 blob of shape {shape} has {len(raw)} bytes, expected {4 * count}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32)).reshape(shape)


# Tensors of any stored dtype (a module's own parameters and buffers, docs/file-format.md "Own tensors"):
# raw little-endian bytes; bfloat16, which numpy lacks, travels as its 16-bit pattern.
TENSOR_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "uint8": torch.uint8, "bool": torch.bool,
}
_NUMPY_DTYPES = {"float64": "<f8", "float16": "<f2", "bfloat16": "<i2", "int8": "i1", "int16": "<i2",
                 "int32": "<i4", "int64": "<i8", "uint8": "u1", "bool": "u1"}
_DTYPE_NAMES = {dtype: name for name, dtype in TENSOR_DTYPES.items()}


def add_tensor(blobs: BlobWriter, tensor: torch.Tensor) -> dict[str, Any]:
    """Append a dense tensor of a dtype in :data:`TENSOR_DTYPES` (float32 as :meth:`BlobWriter.add_float32`).

    Raises:
        ValueError: another dtype (complex, quantised, ...) or a sparse tensor.
    """
    name = _DTYPE_NAMES.get(tensor.dtype)
    if name is None or tensor.layout != torch.strided:
        kind = tensor.dtype if name is None else tensor.layout
        raise ValueError(f"a {kind} tensor cannot be stored (stored: dense tensors of dtype "
                         f"{', '.join(TENSOR_DTYPES)})")
    if name == "float32":
        return blobs.add_float32(tensor)
    flat = tensor.detach().cpu().contiguous()
    if name == "bfloat16":
        flat = flat.view(torch.int16)
    array = flat.to(torch.uint8).numpy() if name == "bool" else flat.numpy()
    data = array.astype(_NUMPY_DTYPES[name], copy=False).tobytes()
    return blobs.add(data, dtype=name, shape=list(tensor.shape))


def read_tensor(data: memoryview, entry: dict[str, Any], fail: Fail) -> torch.Tensor:
    """Decode a blob written by :func:`add_tensor`; refuses an unknown dtype, bad shape or wrong length."""
    name, shape = entry["dtype"], entry["shape"]
    if name not in TENSOR_DTYPES:
        raise fail(f"unknown tensor dtype {name!r} (known: {', '.join(TENSOR_DTYPES)})")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise fail(f"malformed tensor shape {str(shape)[:60]} (a list of non-negative integers)")
    if name == "float32":
        return float32_tensor(data, entry, fail)
    raw, count = blob(data, entry, fail), math.prod(shape)
    size = TENSOR_DTYPES[name].itemsize
    if len(raw) != size * count:
        raise fail(f"{name} blob of shape {shape} has {len(raw)} bytes, expected {size * count}")
    array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[name])
    if name == "bool":
        if array.size and int(array.max()) > 1:
            raise fail("bool blob holds bytes other than 0 and 1")
        return torch.from_numpy(array.astype(np.bool_)).reshape(shape)
    tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("=")))  # a native-order copy
    return (tensor.view(torch.bfloat16) if name == "bfloat16" else tensor).reshape(shape)
