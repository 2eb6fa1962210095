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
