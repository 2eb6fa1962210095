"""A compact bit-packed file for compressed plain models, whose size on disk reflects the bit widths.

A ``torch.save`` file stores every weight as float32, so quantising a layer to 4 bits would not make the file
any smaller. This format stores each quantised Linear/Conv2d weight tensor as integer grid codes packed
densely at the fewest bits that hold them, so the file size is (almost) the bit accounting of the papers.

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

File layout (all integers little-endian)::

    b"BCPK" | version u16 | header_len u32 | data_len u64 | header (UTF-8 JSON, header_len bytes)
            | data (blobs, data_len bytes) | crc32 u32 of every byte before it

The JSON header holds one spec per module (type, constructor arguments, and for every blob its byte offset and
length inside the data section) plus the user's ``metadata``. Bit widths come back from :func:`load_packed`
under the reserved metadata key ``"_packed"`` (``{"version", "bits", "steps"}``, keyed by module index) and
from :func:`packed_layer_bits`.
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
FORMAT_VERSION = 1
RESERVED_KEY = "_packed"
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
        if quant is None:
            spec["blobs"]["weight"] = blobs.add_float32(module.weight)
        else:
            try:
                codes = quantize_codes(module.weight, quant.step)
            except ValueError as error:
                raise ValueError(f"module {index} ({kind.__name__}): {error}") from error
            low = int(codes.min()) if codes.size else 0
            high = int(codes.max()) if codes.size else 0
            bits = bits_needed(high - low)
            if bits > _MAX_BITS:
                raise ValueError(f"module {index} ({kind.__name__}): step {quant.step} needs {bits} bits per "
                                 f"weight (more than {_MAX_BITS}); use a coarser step")
            data = pack_uint(codes - low, bits)
            spec["blobs"]["weight"] = blobs.add(data, dtype="packed", shape=list(module.weight.shape),
                                                bits=bits, offset_code=low,
                                                step=float(np.float32(quant.step)))
        if module.bias is not None:
            spec["blobs"]["bias"] = blobs.add_float32(module.bias)
    else:  # pragma: no cover - guarded by the caller
        raise AssertionError(kind)
    return spec


# ----------------------------------------------------------------------------------------------- saving


def _check_model(model: nn.Module, quant: dict[int, QuantSpec]) -> None:
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"save_packed needs an nn.Sequential, got {type(model).__name__}")
    modules = list(model)
    for index, module in enumerate(modules):
        if type(module) not in SUPPORTED_TYPES.values():
            raise ValueError(
                f"module {index} ({type(module).__name__}) cannot be stored in a packed file; supported "
                "module types (exact classes, no subclasses or nested containers): "
                f"{', '.join(sorted(SUPPORTED_TYPES))}"
            )
    for index, spec in quant.items():
        if not isinstance(index, int) or not 0 <= index < len(modules):
            raise ValueError(f"quant key {index!r} is not a module index of the Sequential "
                             f"(0..{len(modules) - 1})")
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


def save_packed(model: nn.Sequential, path: PathLike, quant: dict[int, QuantSpec] | None = None,
                metadata: dict | None = None) -> int:
    """Write ``model`` to ``path`` atomically in the packed format; returns the number of bytes written.

    Args:
        model: an ``nn.Sequential`` of the supported module types (:data:`SUPPORTED_TYPES`).
        quant: module index -> :class:`QuantSpec` for the Linear/Conv2d layers stored as packed integer codes
            (weights off the grid are rounded to it with ``floor(w / step + 0.5)``).
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
    specs = [_spec_of(i, m, quant.get(i), blobs) for i, m in enumerate(model)]
    try:
        header = json.dumps({"modules": specs, "metadata": metadata}, allow_nan=True,
                            separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata is not JSON-serialisable: {error}") from error
    body = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), blobs.size) + header
    crc = zlib.crc32(body)
    for part in blobs.parts:
        crc = zlib.crc32(part, crc)
    parts = [body, *blobs.parts, _CRC.pack(crc & 0xFFFFFFFF)]
    _atomic_write(Path(path), parts)
    return sum(len(p) for p in parts)


# ----------------------------------------------------------------------------------------------- loading


def _read_checked(path: Path) -> tuple[dict[str, Any], memoryview]:
    """Validate magic, version, lengths and CRC; return the parsed header and the data section."""
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
    if version != FORMAT_VERSION:
        raise PackedFormatError(f"{path}: unsupported packed format version {version} "
                                f"(this bayescomp reads version {FORMAT_VERSION})")
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
    return header, memoryview(raw)[start:start + data_len]


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


def _weight_tensor(data: memoryview, entry: dict[str, Any],
                   fail: Callable[[str], PackedFormatError]) -> torch.Tensor:
    if entry.get("dtype") != "packed":
        return _float32_tensor(data, entry, fail)
    shape = [int(s) for s in entry["shape"]]
    count, bits = math.prod(shape), int(entry["bits"])
    if not 1 <= bits <= _MAX_BITS:
        raise fail(f"invalid bit width {bits}")
    blob = _blob(data, entry, fail)
    if len(blob) != (count * bits + 7) // 8:
        raise fail(f"packed blob has {len(blob)} bytes, expected {(count * bits + 7) // 8}")
    codes = unpack_uint(bytes(blob), count, bits).astype(np.int64) + int(entry["offset_code"])
    return torch.from_numpy(dequantize_codes(codes, float(entry["step"]))).reshape(shape)


def _build(spec: dict[str, Any], data: memoryview, fail: Callable[[str], PackedFormatError]) -> nn.Module:
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
    tensors = {key: (_weight_tensor(data, entry, fail) if key == "weight" and kind in (nn.Linear, nn.Conv2d)
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


def load_packed(path: PathLike) -> tuple[nn.Sequential, dict]:
    """Read a packed file; returns the model (in eval mode) and its metadata.

    The metadata is the dict given to :func:`save_packed` plus the reserved key ``"_packed"``:
    ``{"version": int, "bits": {module index: bit width}, "steps": {module index: step}}`` for the quantised
    layers.

    Raises:
        PackedFormatError: the file is not a packed file, has another version, is truncated or corrupted, or
            names a module type this version does not know. The message names the file.
    """
    path = Path(path)
    header, data = _read_checked(path)
    modules: list[nn.Module] = []
    bits: dict[int, int] = {}
    steps: dict[int, float] = {}
    for index, spec in enumerate(header["modules"]):
        def fail(message: str, index: int = index, spec: Any = spec) -> PackedFormatError:
            name = spec.get("type") if isinstance(spec, dict) else spec
            return PackedFormatError(f"{path}: module {index} ({name}): {message}")

        if not isinstance(spec, dict):
            raise fail("malformed module spec")
        try:
            modules.append(_build(spec, data, fail))
        except PackedFormatError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise fail(f"malformed module spec ({type(error).__name__}: {error})") from error
        weight = spec.get("blobs", {}).get("weight", {})
        if weight.get("dtype") == "packed":
            bits[index], steps[index] = int(weight["bits"]), float(weight["step"])
    metadata = dict(header.get("metadata") or {})
    metadata[RESERVED_KEY] = {"version": FORMAT_VERSION, "bits": bits, "steps": steps}
    return nn.Sequential(*modules).eval(), metadata


def packed_layer_bits(path: PathLike) -> dict[int, int]:
    """Bit width per quantised layer (module index -> bits) of a packed file, without building the model."""
    path = Path(path)
    header, _ = _read_checked(path)
    out: dict[int, int] = {}
    for index, spec in enumerate(header["modules"]):
        weight = spec.get("blobs", {}).get("weight", {}) if isinstance(spec, dict) else {}
        if weight.get("dtype") == "packed":
            out[index] = int(weight["bits"])
    return out


__all__ = [
    "FORMAT_VERSION", "MAGIC", "PackedFormatError", "QuantSpec", "SUPPORTED_TYPES", "load_packed",
    "packed_layer_bits", "save_packed",
]
