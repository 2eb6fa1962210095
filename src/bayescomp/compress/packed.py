"""A compact bit-packed file for compressed plain models, whose size on disk reflects the bit widths.

A ``torch.save`` file stores every weight as float32, so quantising a layer to 4 bits (or pruning 99 % of its
single weights) would not make the file any smaller. This format stores each quantised Linear/Conv2d weight
tensor as integer grid codes packed densely at the fewest bits that hold them, and stores a weight that is
mostly zeros (unstructured sparsity, e.g. after Sparse Variational Dropout) as positions plus non-zero values,
so the file size is (almost) the bit accounting of the papers.

What is stored
--------------
* Quantised layer (its index in the Sequential is a key of ``quant``): codes ``c = floor(w / step + 0.5)``
  (computed in float32, exactly as :func:`bayescomp.compress.precision.quantize_fixed_point`), shifted by
  their minimum to ``u = c - min(c) >= 0`` and packed big-endian-first with ``b = max(1, bit_length(max u))``
  bits each via ``np.packbits``. The header keeps ``min(c)``, ``b`` and the float32 ``step``; on load the
  weight is ``float32(c) * float32(step)``, so a model whose weights were already on the grid is reproduced
  bit for bit.
* Everything else (unquantised weights, all biases, BatchNorm affine parameters and running statistics) is raw
  little-endian float32; InputSelect indices are uint16 (uint32/int64 only when the input is that large).

Weight encodings (format version 2)
-----------------------------------
Every Linear/Conv2d weight is written in whichever of three encodings gives the fewest bytes (ties go to the
earlier one in this list); its header entry names it (``"encoding"``) and records ``nnz``, the number of
non-zero entries. A quantised entry is "non-zero" when its code is not 0 (weights that round to 0 are zeros
of the quantised model); an unquantised one when its float32 value is not 0 (``-0.0`` counts as zero and is
loaded as ``+0.0``; NaN counts as non-zero).

* ``"dense"``: every entry, as described above (``ceil(numel * b / 8)`` or ``4 * numel`` bytes).
* ``"sparse_mask"``: a bitmask of ``numel`` bits (entry ``i`` of the row-major flattened weight is non-zero
  iff bit ``i`` is set; ``np.packbits`` order, ``ceil(numel / 8)`` bytes), then the values.
* ``"sparse_gaps"``: for the sorted flat indices ``p_0 < p_1 < ...`` of the non-zeros, the gaps
  ``g_k = p_k - p_{k-1} - 1`` (with ``p_{-1} = -1``: the zeros skipped before each non-zero) packed at the
  fixed width ``gap_bits = max(1, bit_length(max g))`` (``ceil(nnz * gap_bits / 8)`` bytes), then the values.

The values of a sparse encoding are the non-zero entries in index order: for a quantised layer their codes
shifted by the minimum *non-zero* code (``offset_code``) and packed at ``bits = max(1, bit_length(range))``,
for an unquantised one raw float32. The positions and the values are each padded to a whole byte and stored
back to back in one blob; ``index_length`` in the header is the byte length of the positions part. Loading
rebuilds exactly the tensor the dense encoding would give: the decoded values at their positions, ``+0.0``
elsewhere. :func:`sparse_weight_bytes` gives a weight's blob size without writing a file, and
:func:`packed_layer_info` reports the encoding and sizes of every layer of a file.

Networks that are not a flat Sequential (format version 3)
-----------------------------------------------------------
A model whose structure is not a Sequential of supported modules (a ResNet, a user's ``nn.Module`` with residual
connections) is stored as the same flat list of supported leaf modules, in depth-first order, plus a ``"tree"``
entry in the header describing the containers: ``{"class": "package.module.Class", "attrs": {...}, "children":
[[name, child], ...]}``, where ``child`` is a leaf index or another container. Loading imports each container class
and rebuilds it *without calling its constructor* (``cls.__new__`` plus ``nn.Module.__init__``), sets its plain
JSON attributes and attaches its children, so the class's ``forward`` runs on the stored leaves. Nothing is
unpickled. A container that holds tensors itself (its own parameters or buffers) cannot be stored. Leaf indices are
the keys of ``quant`` and of the reported bits and encodings.

Version-1 files (written before sparse encodings existed; their weight entries carry no ``"encoding"`` and
are all dense) are still read.

File layout (all integers little-endian)::

    b"BCPK" | version u16 | header_len u32 | data_len u64 | header (UTF-8 JSON, header_len bytes)
            | data (blobs, data_len bytes) | crc32 u32 of every byte before it

The JSON header holds one spec per module (type, constructor arguments, and for every blob its byte offset and
length inside the data section) plus the user's ``metadata``. Bit widths come back from :func:`load_packed`
under the reserved metadata key ``"_packed"`` (``{"version", "bits", "steps", "encodings"}``, keyed by module
index) and from :func:`packed_layer_bits`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bayescomp.modules import InputSelect, Normalize

MAGIC = b"BCPK"
FORMAT_VERSION = 2  # flat Sequential files; files with a module tree are version 3
TREE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # version 1: dense weights only; version 3: a module tree over the leaves
RESERVED_KEY = "_packed"
ENCODINGS = ("dense", "sparse_mask", "sparse_gaps")  # in order of preference when sizes tie
_PREAMBLE = struct.Struct("<4sHIQ")  # magic, version, header_len, data_len
_CRC = struct.Struct("<I")
_CHUNK = 1 << 20  # weights packed per numpy call (a multiple of 8, so chunks end on byte boundaries)
_MAX_BITS = 62

PathLike = str | os.PathLike


class PackedFormatError(Exception):
    """A packed file cannot be read: wrong magic, unsupported version, truncated, corrupted or malformed."""


@dataclass
class QuantSpec:
    """Fixed-point quantisation of one layer's weight: integer multiples of ``step`` (e.g. 2**-t)."""

    step: float

    def __post_init__(self) -> None:
        step32 = float(np.float32(self.step))
        if not (math.isfinite(step32) and step32 > 0):
            raise ValueError(f"QuantSpec.step must be a positive finite float32 value, got {self.step!r}")


# ----------------------------------------------------------------------------------------------- bit packing


def bits_needed(max_value: int) -> int:
    """The fewest bits (at least 1) that represent every integer in ``[0, max_value]``."""
    return max(1, int(max_value).bit_length())


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
        if largest >= 2.0 ** _MAX_BITS:
            raise ValueError(f"step {step} is too fine for weights up to {float(w.abs().max())}: "
                             f"the codes need more than {_MAX_BITS} bits")
    return codes.to(torch.int64).numpy()


def dequantize_codes(codes: np.ndarray, step: float) -> np.ndarray:
    """``float32(code) * float32(step)`` (the loaded weight values)."""
    return codes.astype(np.float32) * np.float32(step)


# ------------------------------------------------------------------------------------------- weight encodings


def _packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` values packed at ``bits`` bits each (padded to a whole byte)."""
    return (count * bits + 7) // 8


@dataclass
class _WeightPlan:
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
    gap_bits: int
    sizes: dict[str, int]  # encoding -> bytes of the weight blob
    encoding: str

    @property
    def nnz(self) -> int:
        return int(self.positions.size)

    def gaps(self) -> np.ndarray:
        """Zeros skipped before each non-zero entry: ``p_k - p_{k-1} - 1`` with ``p_{-1} = -1``."""
        return np.diff(self.positions, prepend=-1) - 1


def _plan_weight(weight: torch.Tensor, step: float | None) -> _WeightPlan:
    """Codes/values, non-zero positions and the byte size of each encoding; picks the smallest encoding.

    Raises:
        ValueError: the weight cannot be quantised at ``step`` (NaN/inf, or more than ``_MAX_BITS`` bits).
    """
    shape = list(weight.shape)
    if step is None:
        flat = weight.detach().to(torch.float32).cpu().reshape(-1).numpy()
        positions = np.flatnonzero(flat != 0)  # -0.0 is a zero (pruning by multiplication leaves -0.0)
        dense_bits = value_bits = 32
        dense_low = value_low = 0
        value_bytes = 4 * positions.size
        dense_bytes = 4 * flat.size
    else:
        step = float(np.float32(step))
        flat = quantize_codes(weight, step)
        dense_low = int(flat.min()) if flat.size else 0
        dense_bits = bits_needed(int(flat.max()) - dense_low) if flat.size else 1
        if dense_bits > _MAX_BITS:
            raise ValueError(f"step {step} needs {dense_bits} bits per weight (more than {_MAX_BITS}); "
                             "use a coarser step")
        positions = np.flatnonzero(flat)
        values = flat[positions]
        value_low = int(values.min()) if values.size else 0
        value_bits = bits_needed(int(values.max()) - value_low) if values.size else 1
        value_bytes = _packed_bytes(positions.size, value_bits)
        dense_bytes = _packed_bytes(flat.size, dense_bits)
    positions = positions.astype(np.int64, copy=False)
    nnz = positions.size
    gap_bits = bits_needed(int((np.diff(positions, prepend=-1) - 1).max())) if nnz else 1
    sizes = {
        "dense": dense_bytes,
        "sparse_mask": _packed_bytes(flat.size, 1) + value_bytes,
        "sparse_gaps": _packed_bytes(nnz, gap_bits) + value_bytes,
    }
    encoding = min(ENCODINGS, key=sizes.__getitem__)  # min keeps the first of equal sizes
    return _WeightPlan(shape, step, flat, positions, dense_bits, dense_low, value_bits, value_low, gap_bits,
                       sizes, encoding)


def _encode_weight(plan: _WeightPlan) -> tuple[bytes, dict[str, Any]]:
    """The blob and header fields (without offset/length) of a weight in its chosen encoding.

    Dense entries keep exactly the version-1 fields (plus ``encoding`` and ``nnz``), so the two versions
    differ only where sparsity is used.
    """
    info: dict[str, Any] = {"dtype": "packed" if plan.step is not None else "float32", "shape": plan.shape}
    if plan.encoding == "dense":
        if plan.step is None:
            data = plan.flat.astype("<f4", copy=False).tobytes()
        else:
            data = pack_uint(plan.flat - plan.dense_low, plan.dense_bits)
            info.update(bits=plan.dense_bits, offset_code=plan.dense_low, step=plan.step)
        info.update(encoding="dense", nnz=plan.nnz)
        return data, info
    values = plan.flat[plan.positions]
    if plan.step is None:
        value_data = values.astype("<f4", copy=False).tobytes()
    else:
        value_data = pack_uint(values - plan.value_low, plan.value_bits)
        info.update(bits=plan.value_bits, offset_code=plan.value_low, step=plan.step)
    if plan.encoding == "sparse_mask":
        mask = np.zeros(plan.flat.size, dtype=bool)
        mask[plan.positions] = True
        index_data = np.packbits(mask).tobytes()
    else:
        index_data = pack_uint(plan.gaps(), plan.gap_bits)
        info["gap_bits"] = plan.gap_bits
    info.update(encoding=plan.encoding, nnz=plan.nnz, index_length=len(index_data))
    data = index_data + value_data
    assert len(data) == plan.sizes[plan.encoding], (plan.encoding, len(data), plan.sizes)
    return data, info


def sparse_weight_bytes(weight: torch.Tensor, step: float | None) -> int:
    """Bytes the weight's blob takes in a packed file, in the encoding :func:`save_packed` would choose.

    ``step`` is the quantisation step (as in :class:`QuantSpec`), or ``None`` for a float32 weight. The
    header entry (a few dozen bytes of JSON) is not included. Reports use this to state the file cost of a
    sparse layer without writing a file.
    """
    if step is not None:
        step = QuantSpec(step).step
    plan = _plan_weight(weight, step)
    return plan.sizes[plan.encoding]


# ----------------------------------------------------------------------------------------------- module specs


def _tuple_or_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _untuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_SIMPLE_ARGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Flatten: ("start_dim", "end_dim"),
    nn.ReLU: ("inplace",),
    nn.LeakyReLU: ("negative_slope", "inplace"),
    nn.ELU: ("alpha", "inplace"),
    nn.GELU: ("approximate",),
    nn.Tanh: (),
    nn.Sigmoid: (),
    nn.SiLU: ("inplace",),
    nn.Identity: (),
    nn.Dropout: ("p", "inplace"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    nn.AdaptiveAvgPool2d: ("output_size",),
}
_WITH_TENSORS: tuple[type[nn.Module], ...] = (
    Normalize, InputSelect, nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d,
)
SUPPORTED_TYPES: dict[str, type[nn.Module]] = {t.__name__: t for t in _WITH_TENSORS + tuple(_SIMPLE_ARGS)}


class _BlobWriter:
    """Collects the binary blobs of the data section and records where each one lies."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes, **info: Any) -> dict[str, Any]:
        entry = {"offset": self.size, "length": len(data), **info}
        self.parts.append(data)
        self.size += len(data)
        return entry

    def add_float32(self, tensor: torch.Tensor) -> dict[str, Any]:
        array = tensor.detach().to(torch.float32).cpu().numpy().astype("<f4", copy=False)
        return self.add(array.tobytes(), dtype="float32", shape=list(tensor.shape))


def _index_dtype(in_features: int) -> str:
    if in_features <= 1 << 16:
        return "uint16"
    return "uint32" if in_features <= 1 << 32 else "int64"


def _spec_of(index: int, module: nn.Module, quant: QuantSpec | None, blobs: _BlobWriter) -> dict[str, Any]:
    kind = type(module)
    spec: dict[str, Any] = {"type": kind.__name__}
    if kind in _SIMPLE_ARGS:
        spec["args"] = {name: _tuple_or_value(getattr(module, name)) for name in _SIMPLE_ARGS[kind]}
    elif kind is Normalize:
        spec["args"] = {"mean": module.mean, "std": module.std}
    elif kind is InputSelect:
        dtype = _index_dtype(module.in_features)
        data = module.indices.detach().cpu().numpy().astype("<" + np.dtype(dtype).str[1:]).tobytes()
        spec["args"] = {"in_features": module.in_features}
        spec["blobs"] = {"indices": blobs.add(data, dtype=dtype, shape=[module.indices.numel()])}
    elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        spec["args"] = {"num_features": module.num_features, "eps": module.eps, "momentum": module.momentum,
                        "affine": module.affine, "track_running_stats": module.track_running_stats}
        spec["blobs"] = {}
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, name)
            if tensor is not None:
                spec["blobs"][name] = blobs.add_float32(tensor)
        if module.num_batches_tracked is not None:
            spec["num_batches_tracked"] = int(module.num_batches_tracked)
    elif kind in (nn.Linear, nn.Conv2d):
        if kind is nn.Linear:
            spec["args"] = {"in_features": module.in_features, "out_features": module.out_features,
                            "bias": module.bias is not None}
        else:
            spec["args"] = {"in_channels": module.in_channels, "out_channels": module.out_channels,
                            "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                            "padding": _tuple_or_value(module.padding), "dilation": list(module.dilation),
                            "groups": module.groups, "bias": module.bias is not None,
                            "padding_mode": module.padding_mode}
        spec["blobs"] = {}
        try:
            plan = _plan_weight(module.weight, None if quant is None else quant.step)
        except ValueError as error:
            raise ValueError(f"module {index} ({kind.__name__}): {error}") from error
        data, info = _encode_weight(plan)
        spec["blobs"]["weight"] = blobs.add(data, **info)
        if module.bias is not None:
            spec["blobs"]["bias"] = blobs.add_float32(module.bias)
    else:  # pragma: no cover - guarded by the caller
        raise AssertionError(kind)
    return spec


# ----------------------------------------------------------------------------------------------- saving


def is_flat(model: nn.Module) -> bool:
    """Whether ``model`` is a Sequential of supported leaf modules (stored without a module tree)."""
    return type(model) is nn.Sequential and all(type(m) in SUPPORTED_TYPES.values() for m in model)


def packed_leaves(model: nn.Module) -> list[nn.Module]:
    """The modules a packed file stores one spec for, in file order (the keys of ``quant`` index this list)."""
    if is_flat(model):
        return list(model)
    if type(model) in SUPPORTED_TYPES.values():
        return [model]
    return [leaf for child in model.children() for leaf in packed_leaves(child)]


def _tree_of(module: nn.Module, leaves: list[nn.Module], name: str = "") -> dict[str, Any] | int:
    if type(module) in SUPPORTED_TYPES.values():
        return next(i for i, leaf in enumerate(leaves) if leaf is module)
    if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
        raise ValueError(f"module {name or '<root>'!r} ({type(module).__name__}) holds its own tensors and cannot be "
                         f"stored in a packed file; supported leaf types: {', '.join(sorted(SUPPORTED_TYPES))}")
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        attrs[key] = value
    cls = type(module)
    dotted = f"{cls.__module__}.{cls.__qualname__}"
    try:
        importable = _import_class(dotted) is cls
    except (ImportError, AttributeError):
        importable = False
    if not importable:
        raise ValueError(f"module {name or '<root>'!r} ({cls.__name__}) cannot be stored in a packed file: its class "
                         f"is not importable as {dotted!r} (define it at module level); supported leaf types: "
                         f"{', '.join(sorted(SUPPORTED_TYPES))}")
    return {"class": dotted, "attrs": attrs,
            "children": [[child_name, _tree_of(child, leaves, f"{name}.{child_name}" if name else child_name)]
                         for child_name, child in module.named_children()]}


def _check_model(model: nn.Module, quant: dict[int, QuantSpec]) -> None:
    modules = packed_leaves(model)
    for index, spec in quant.items():
        if not isinstance(index, int) or not 0 <= index < len(modules):
            raise ValueError(f"quant key {index!r} is not a module index of the Sequential or of the stored "
                             f"leaves (0..{len(modules) - 1})")
        if type(modules[index]) not in (nn.Linear, nn.Conv2d):
            raise ValueError(f"quant key {index}: module {index} is a {type(modules[index]).__name__}, "
                             "only Linear and Conv2d weights can be quantised")
        if not isinstance(spec, QuantSpec):
            raise ValueError(f"quant[{index}] must be a QuantSpec, got {type(spec).__name__}")


def _atomic_write(path: Path, parts: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable where the platform allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_packed(model: nn.Module, path: PathLike, quant: dict[int, QuantSpec] | None = None,
                metadata: dict | None = None) -> int:
    """Write ``model`` to ``path`` atomically in the packed format; returns the number of bytes written.

    Args:
        model: an ``nn.Sequential`` of the supported module types (:data:`SUPPORTED_TYPES`), or any module tree
            whose leaves are of those types (stored with a module tree, format version 3).
        quant: module index (position in :func:`packed_leaves`) -> :class:`QuantSpec` for the Linear/Conv2d
            layers stored as packed integer codes (weights off the grid are rounded to it with
            ``floor(w / step + 0.5)``).
        metadata: JSON-serialisable dict stored in the header and returned by :func:`load_packed`.

    Raises:
        ValueError: an unsupported module, a bad ``quant`` entry, or metadata that is not JSON-serialisable.
    """
    quant = dict(quant or {})
    metadata = dict(metadata or {})
    if RESERVED_KEY in metadata:
        raise ValueError(f"metadata key {RESERVED_KEY!r} is reserved for the packed format")
    _check_model(model, quant)
    blobs = _BlobWriter()
    leaves = packed_leaves(model)
    specs = [_spec_of(i, m, quant.get(i), blobs) for i, m in enumerate(leaves)]
    content: dict[str, Any] = {"modules": specs, "metadata": metadata}
    version = FORMAT_VERSION
    if not is_flat(model):
        content["tree"], version = _tree_of(model, leaves), TREE_VERSION
    try:
        header = json.dumps(content, allow_nan=True, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata is not JSON-serialisable: {error}") from error
    body = _PREAMBLE.pack(MAGIC, version, len(header), blobs.size) + header
    crc = zlib.crc32(body)
    for part in blobs.parts:
        crc = zlib.crc32(part, crc)
    parts = [body, *blobs.parts, _CRC.pack(crc & 0xFFFFFFFF)]
    _atomic_write(Path(path), parts)
    return sum(len(p) for p in parts)


# ----------------------------------------------------------------------------------------------- loading


def _read_checked(path: Path) -> tuple[dict[str, Any], memoryview, int]:
    """Validate magic, version, lengths and CRC; return the parsed header, data section and version."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PackedFormatError(f"{path}: cannot read packed file ({error})") from error
    if len(raw) >= 4 and raw[:4] != MAGIC:
        raise PackedFormatError(f"{path}: not a bayescomp packed file (bad magic {raw[:4]!r}, "
                                f"expected {MAGIC!r})")
    if len(raw) < _PREAMBLE.size + _CRC.size:
        raise PackedFormatError(f"{path}: truncated packed file ({len(raw)} bytes, shorter than the "
                                f"{_PREAMBLE.size + _CRC.size}-byte minimum)")
    _, version, header_len, data_len = _PREAMBLE.unpack_from(raw)
    if version not in READABLE_VERSIONS:
        raise PackedFormatError(f"{path}: unsupported packed format version {version} (this bayescomp reads "
                                f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    expected = _PREAMBLE.size + header_len + data_len + _CRC.size
    if len(raw) < expected:
        raise PackedFormatError(f"{path}: truncated or corrupted packed file (header declares {expected} "
                                f"bytes, file has {len(raw)})")
    if len(raw) > expected:
        raise PackedFormatError(f"{path}: corrupted packed file ({len(raw) - expected} unexpected "
                                f"trailing bytes after the declared {expected})")
    (stored_crc,) = _CRC.unpack_from(raw, expected - _CRC.size)
    actual_crc = zlib.crc32(memoryview(raw)[:expected - _CRC.size]) & 0xFFFFFFFF
    if stored_crc != actual_crc:
        raise PackedFormatError(f"{path}: checksum mismatch (stored CRC32 {stored_crc:#010x}, computed "
                                f"{actual_crc:#010x}); the file is corrupted")
    try:
        header = json.loads(raw[_PREAMBLE.size:_PREAMBLE.size + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackedFormatError(f"{path}: malformed header ({error})") from error
    if not isinstance(header, dict) or not isinstance(header.get("modules"), list):
        raise PackedFormatError(f"{path}: malformed header (no module list)")
    start = _PREAMBLE.size + header_len
    return header, memoryview(raw)[start:start + data_len], version


def _blob(data: memoryview, entry: dict[str, Any], fail: Callable[[str], PackedFormatError]) -> memoryview:
    offset, length = int(entry["offset"]), int(entry["length"])
    if offset < 0 or length < 0 or offset + length > len(data):
        raise fail(f"blob [{offset}, {offset + length}) lies outside the {len(data)}-byte data section")
    return data[offset:offset + length]


def _float32_tensor(data: memoryview, entry: dict[str, Any],
                    fail: Callable[[str], PackedFormatError]) -> torch.Tensor:
    shape = [int(s) for s in entry["shape"]]
    blob = _blob(data, entry, fail)
    count = math.prod(shape)
    if len(blob) != 4 * count:
        raise fail(f"float32 blob of shape {shape} has {len(blob)} bytes, expected {4 * count}")
    return torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32)).reshape(shape)


def _weight_encoding(entry: dict[str, Any], version: int, fail: Callable[[str], PackedFormatError]) -> str:
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


def _value_bits(entry: dict[str, Any], fail: Callable[[str], PackedFormatError]) -> int:
    """Bits per stored value of a weight entry (32 for float32), validated."""
    if entry["dtype"] != "packed":
        return 32
    bits = int(entry["bits"])
    if not 1 <= bits <= _MAX_BITS:
        raise fail(f"invalid bit width {bits}")
    return bits


def _decode_values(blob: memoryview, count: int, entry: dict[str, Any],
                   fail: Callable[[str], PackedFormatError], what: str) -> np.ndarray:
    """``count`` float32 values from a packed-code or float32 blob that must have exactly the right length."""
    bits = _value_bits(entry, fail)
    expected = _packed_bytes(count, bits) if entry["dtype"] == "packed" else 4 * count
    if len(blob) != expected:
        raise fail(f"{what} of {count} values at {bits} bits has {len(blob)} bytes, expected {expected}")
    if entry["dtype"] != "packed":
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)
    codes = unpack_uint(bytes(blob), count, bits).astype(np.int64) + int(entry["offset_code"])
    return dequantize_codes(codes, float(entry["step"]))


def _sparse_positions(index_blob: memoryview, count: int, nnz: int, encoding: str, entry: dict[str, Any],
                      fail: Callable[[str], PackedFormatError]) -> np.ndarray:
    """Sorted flat indices of the non-zeros from a mask or gap blob; rejects anything inconsistent."""
    if encoding == "sparse_mask":
        if len(index_blob) != _packed_bytes(count, 1):
            raise fail(f"mask of {count} bits has {len(index_blob)} bytes, expected "
                       f"{_packed_bytes(count, 1)}")
        mask = np.unpackbits(np.frombuffer(index_blob, dtype=np.uint8), count=count)
        positions = np.flatnonzero(mask)
        if positions.size != nnz:
            raise fail(f"mask marks {positions.size} non-zero entries, header says nnz = {nnz}")
        return positions.astype(np.int64, copy=False)
    gap_bits = int(entry["gap_bits"])
    if not 1 <= gap_bits <= 64:
        raise fail(f"invalid gap width {gap_bits}")
    if len(index_blob) != _packed_bytes(nnz, gap_bits):
        raise fail(f"{nnz} gaps at {gap_bits} bits have {len(index_blob)} bytes, expected "
                   f"{_packed_bytes(nnz, gap_bits)}")
    gaps = unpack_uint(bytes(index_blob), nnz, gap_bits)
    # every gap <= count - 1 and (in float, overflow-free) their sum small enough before the exact int64 sum
    if nnz and (int(gaps.max()) > count - 1 or float(gaps.sum(dtype=np.float64)) + nnz > count + 1.0):
        raise fail(f"gaps run past the end of the {count}-entry weight")
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if nnz and int(positions[-1]) >= count:
        raise fail(f"gaps run past the end of the {count}-entry weight (last index {int(positions[-1])})")
    return positions


def _weight_tensor(data: memoryview, entry: dict[str, Any], fail: Callable[[str], PackedFormatError],
                   version: int, expected_shape: list[int]) -> torch.Tensor:
    """Decode a Linear/Conv2d weight in any encoding to the same float32 tensor the dense encoding gives."""
    encoding = _weight_encoding(entry, version, fail)
    shape = [int(s) for s in entry["shape"]]
    if shape != expected_shape:  # checked before decoding, so a bad header cannot make us allocate wildly
        raise fail(f"weight of shape {shape} does not fit the module (expects {expected_shape})")
    count = math.prod(shape)
    blob = _blob(data, entry, fail)
    if encoding == "dense":
        flat = _decode_values(blob, count, entry, fail, "dense weight blob")
        if "nnz" in entry and int(entry["nnz"]) != int(np.count_nonzero(flat)):
            raise fail(f"dense weight has {int(np.count_nonzero(flat))} non-zero entries, header says "
                       f"nnz = {int(entry['nnz'])}")
        return torch.from_numpy(flat).reshape(shape)
    nnz, index_length = int(entry["nnz"]), int(entry["index_length"])
    if not 0 <= nnz <= count:
        raise fail(f"nnz = {nnz} is out of range for a weight of {count} entries")
    if not 0 <= index_length <= len(blob):
        raise fail(f"index_length = {index_length} is out of range for a {len(blob)}-byte weight blob")
    positions = _sparse_positions(blob[:index_length], count, nnz, encoding, entry, fail)
    values = _decode_values(blob[index_length:], nnz, entry, fail, "sparse value blob")
    flat = np.zeros(count, dtype=np.float32)
    flat[positions] = values
    return torch.from_numpy(flat).reshape(shape)


def _build(spec: dict[str, Any], data: memoryview, fail: Callable[[str], PackedFormatError],
           version: int) -> nn.Module:
    name = spec.get("type")
    kind = SUPPORTED_TYPES.get(name)
    if kind is None:
        raise fail(f"unknown module type {name!r} (known: {', '.join(sorted(SUPPORTED_TYPES))})")
    args = {key: _untuple(value) for key, value in spec.get("args", {}).items()}
    blobs = spec.get("blobs", {})
    if kind in _SIMPLE_ARGS:
        return kind(**args)
    if kind is Normalize:
        return Normalize(spec["args"]["mean"], spec["args"]["std"])
    if kind is InputSelect:
        entry = blobs["indices"]
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        indices = np.frombuffer(_blob(data, entry, fail), dtype=dtype).astype(np.int64)
        return InputSelect(torch.from_numpy(indices), args["in_features"])
    module = kind(**args)
    tensors = {key: (_weight_tensor(data, entry, fail, version, list(module.weight.shape))
                     if key == "weight" and kind in (nn.Linear, nn.Conv2d)
                     else _float32_tensor(data, entry, fail)) for key, entry in blobs.items()}
    with torch.no_grad():
        for key, tensor in tensors.items():
            target = getattr(module, key, None)
            if not isinstance(target, torch.Tensor) or target.shape != tensor.shape:
                raise fail(f"tensor {key!r} of shape {list(tensor.shape)} does not fit the module")
            target.copy_(tensor)
        if "num_batches_tracked" in spec and getattr(module, "num_batches_tracked", None) is not None:
            module.num_batches_tracked.fill_(int(spec["num_batches_tracked"]))
    return module


_DECODE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError)


def _module_fail(path: Path, index: int, spec: Any) -> Callable[[str], PackedFormatError]:
    """An error factory whose messages name the file and the module."""
    def fail(message: str) -> PackedFormatError:
        name = spec.get("type") if isinstance(spec, dict) else spec
        return PackedFormatError(f"{path}: module {index} ({name}): {message}")
    return fail


def _import_class(dotted: str) -> type:
    import importlib

    module_name, _, qualname = dotted.rpartition(".")
    while module_name:
        try:
            owner: Any = importlib.import_module(module_name)
            break
        except ImportError:
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
    else:
        raise ImportError(f"cannot import {dotted!r}")
    for part in qualname.split("."):
        owner = getattr(owner, part)
    return owner


def _build_tree(node: Any, leaves: list[nn.Module], path: Path) -> nn.Module:
    if isinstance(node, int) and not isinstance(node, bool):
        if not 0 <= node < len(leaves):
            raise PackedFormatError(f"{path}: module tree names leaf {node}, the file has {len(leaves)}")
        return leaves[node]
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise PackedFormatError(f"{path}: malformed module tree node {str(node)[:80]!r}")
    try:
        cls = _import_class(node["class"])
    except (ImportError, AttributeError) as error:
        raise PackedFormatError(f"{path}: the model's class {node['class']!r} cannot be imported ({error}); "
                                "import the package that defines it first") from error
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PackedFormatError(f"{path}: {node['class']!r} is not an nn.Module class")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in dict(node.get("attrs") or {}).items():
        setattr(module, key, value)
    for name, child in node.get("children") or []:
        module.add_module(str(name), _build_tree(child, leaves, path))
    return module


def load_packed(path: PathLike) -> tuple[nn.Module, dict]:
    """Read a packed file (format version 1, 2 or 3); returns the model (in eval mode) and its metadata.

    Version-1/2 files hold an ``nn.Sequential``; version-3 files rebuild the stored module tree (its classes must
    be importable: a zoo model's are, a user's model needs its package imported).

    The metadata is the dict given to :func:`save_packed` plus the reserved key ``"_packed"``:
    ``{"version": int (of the file), "bits": {module index: bits per stored value}, "steps": {module index:
    step}}`` for the quantised layers, and ``"encodings": {module index: encoding}`` for every Linear/Conv2d.

    Raises:
        PackedFormatError: the file is not a packed file, has another version, is truncated, corrupted or
            malformed (including inconsistent sparse weights), or names a module type this version does not
            know. The message names the file.
    """
    path = Path(path)
    header, data, version = _read_checked(path)
    modules: list[nn.Module] = []
    bits: dict[int, int] = {}
    steps: dict[int, float] = {}
    encodings: dict[int, str] = {}
    for index, spec in enumerate(header["modules"]):
        fail = _module_fail(path, index, spec)
        if not isinstance(spec, dict):
            raise fail("malformed module spec")
        try:
            modules.append(_build(spec, data, fail, version))
        except PackedFormatError:
            raise
        except _DECODE_ERRORS as error:
            raise fail(f"malformed module spec ({type(error).__name__}: {error})") from error
        weight = spec.get("blobs", {}).get("weight", {})
        if weight.get("dtype") == "packed":
            bits[index], steps[index] = int(weight["bits"]), float(weight["step"])
        if spec["type"] in ("Linear", "Conv2d") and weight:
            encodings[index] = weight.get("encoding", "dense")
    metadata = dict(header.get("metadata") or {})
    metadata[RESERVED_KEY] = {"version": version, "bits": bits, "steps": steps, "encodings": encodings}
    if version >= TREE_VERSION and "tree" in header:
        return _build_tree(header["tree"], modules, path).eval(), metadata
    return nn.Sequential(*modules).eval(), metadata


def packed_layer_bits(path: PathLike) -> dict[int, int]:
    """Bits per stored value of each quantised layer (module index -> bits), without building the model.

    For a sparse encoding these are the bits of the non-zero codes (shifted by their minimum).
    """
    path = Path(path)
    header, _, _ = _read_checked(path)
    out: dict[int, int] = {}
    for index, spec in enumerate(header["modules"]):
        weight = spec.get("blobs", {}).get("weight", {}) if isinstance(spec, dict) else {}
        if weight.get("dtype") == "packed":
            out[index] = int(weight["bits"])
    return out


def _layer_info(entry: dict[str, Any], data: memoryview, fail: Callable[[str], PackedFormatError],
                version: int) -> dict[str, Any]:
    """What :func:`packed_layer_info` reports for one weight entry."""
    encoding = _weight_encoding(entry, version, fail)
    shape = [int(s) for s in entry["shape"]]
    length = int(entry["length"])
    index_bytes = int(entry["index_length"]) if encoding != "dense" else 0
    if "nnz" in entry:
        nnz = int(entry["nnz"])
    else:  # version 1 did not record it: count from the decoded weight
        nnz = int(torch.count_nonzero(_weight_tensor(data, entry, fail, version, shape)))
    quantized = entry["dtype"] == "packed"
    return {
        "encoding": encoding,
        "quantized": quantized,
        "bits": _value_bits(entry, fail),
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
    ``shape``, ``numel``, ``nnz`` (non-zero entries, as defined in the module docstring), ``weight_bytes``
    (the whole weight blob), ``index_bytes`` (its mask/gap part, 0 when dense), ``value_bytes`` and
    ``gap_bits`` (``None`` unless gap-coded). Biases are not included.

    Raises:
        PackedFormatError: as :func:`load_packed` for an unreadable file or a malformed weight entry.
    """
    path = Path(path)
    header, data, version = _read_checked(path)
    out: dict[int, dict[str, Any]] = {}
    for index, spec in enumerate(header["modules"]):
        if not isinstance(spec, dict) or spec.get("type") not in ("Linear", "Conv2d"):
            continue
        fail = _module_fail(path, index, spec)
        try:
            out[index] = _layer_info(spec["blobs"]["weight"], data, fail, version)
        except PackedFormatError:
            raise
        except _DECODE_ERRORS as error:
            raise fail(f"malformed weight entry ({type(error).__name__}: {error})") from error
    return out


__all__ = [
    "ENCODINGS", "FORMAT_VERSION", "MAGIC", "TREE_VERSION", "is_flat", "packed_leaves", "PackedFormatError", "QuantSpec", "READABLE_VERSIONS",
    "SUPPORTED_TYPES", "load_packed", "packed_layer_bits", "packed_layer_info", "save_packed",
    "sparse_weight_bytes",
]
