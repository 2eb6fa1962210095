"""Module codecs: one table entry per supported leaf type, with its encoder beside its decoder.

Each entry says which constructor arguments the header stores (``args``), which tensors (``blobs``), and how
they are written and read back. Adding a leaf type is one :func:`register_codec` call; the format
specification (docs/file-format.md) lists the table. Nothing here runs code named by a file: the header's
``type`` is looked up in this table and nowhere else, and a spec may hold only the fields its entry declares
(no ``device=`` or ``dtype=`` smuggled into a constructor, no tensor set on an attribute the type lacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bayescomp.compress.packed.blobs import BlobWriter, blob, float32_tensor
from bayescomp.compress.packed.format import Fail, QuantSpec
from bayescomp.compress.packed.weights import decode_weight, encode_weight, plan_weight
from bayescomp.modules import InputSelect, Normalize

Encoder = Callable[[nn.Module, "QuantSpec | None", BlobWriter], dict[str, Any]]
Decoder = Callable[[dict[str, Any], memoryview, Fail, int], nn.Module]


@dataclass(frozen=True)
class ModuleCodec:
    """How one leaf type is stored: ``encode`` gives the spec fields after ``type``, ``decode`` rebuilds.

    ``args``, ``tensors`` and ``extra`` are the only constructor arguments, blob names and further spec keys a
    file may give this type.
    """

    kind: type[nn.Module]
    encode: Encoder
    decode: Decoder
    args: tuple[str, ...]
    tensors: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()


MODULE_CODECS: dict[type[nn.Module], ModuleCodec] = {}
SUPPORTED_TYPES: dict[str, type[nn.Module]] = {}


def register_codec(kind: type[nn.Module], encode: Encoder, decode: Decoder, args: tuple[str, ...],
                   tensors: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> None:
    """Add a leaf type to the format (its header ``type`` is the class name)."""
    MODULE_CODECS[kind] = ModuleCodec(kind, encode, decode, args, tensors, extra)
    SUPPORTED_TYPES[kind.__name__] = kind


def _tuple_or_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _untuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _args(spec: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a spec, JSON lists turned back into tuples."""
    return {key: _untuple(value) for key, value in spec.get("args", {}).items()}


def _fill_tensors(module: nn.Module, spec: dict[str, Any], data: memoryview, fail: Fail,
                  version: int) -> nn.Module:
    """Copy the spec's blobs into the module's tensors (Linear/Conv2d weights through their encodings)."""
    weighted = type(module) in (nn.Linear, nn.Conv2d)
    tensors = {key: (decode_weight(data, entry, fail, version, list(module.weight.shape))
                     if key == "weight" and weighted else float32_tensor(data, entry, fail))
               for key, entry in spec.get("blobs", {}).items()}
    with torch.no_grad():
        for key, tensor in tensors.items():
            target = getattr(module, key, None)
            if not isinstance(target, torch.Tensor) or target.shape != tensor.shape:
                raise fail(f"tensor {key!r} of shape {list(tensor.shape)} does not fit the module")
            target.copy_(tensor)
        if "num_batches_tracked" in spec and getattr(module, "num_batches_tracked", None) is not None:
            module.num_batches_tracked.fill_(int(spec["num_batches_tracked"]))
    return module


# ------------------------------------------------------------------------------- modules without tensors


def _simple(kind: type[nn.Module], names: tuple[str, ...]) -> None:
    """Register a tensor-free module stored as its constructor arguments ``names``."""
    def encode(module: nn.Module, quant: QuantSpec | None, blobs: BlobWriter) -> dict[str, Any]:
        return {"args": {name: _tuple_or_value(getattr(module, name)) for name in names}}

    def decode(spec: dict[str, Any], data: memoryview, fail: Fail, version: int) -> nn.Module:
        return kind(**_args(spec))

    register_codec(kind, encode, decode, names)


# ---------------------------------------------------------------------------- bayescomp's input modules


def _encode_normalize(module: Normalize, quant: QuantSpec | None, blobs: BlobWriter) -> dict[str, Any]:
    return {"args": {"mean": module.mean, "std": module.std}}


def _decode_normalize(spec: dict[str, Any], data: memoryview, fail: Fail, version: int) -> nn.Module:
    return Normalize(spec["args"]["mean"], spec["args"]["std"])


def _index_dtype(in_features: int) -> str:
    if in_features <= 1 << 16:
        return "uint16"
    return "uint32" if in_features <= 1 << 32 else "int64"


def _encode_input_select(module: InputSelect, quant: QuantSpec | None, blobs: BlobWriter) -> dict[str, Any]:
    dtype = _index_dtype(module.in_features)
    data = module.indices.detach().cpu().numpy().astype("<" + np.dtype(dtype).str[1:]).tobytes()
    return {"args": {"in_features": module.in_features},
            "blobs": {"indices": blobs.add(data, dtype=dtype, shape=[module.indices.numel()])}}


def _decode_input_select(spec: dict[str, Any], data: memoryview, fail: Fail, version: int) -> nn.Module:
    entry = spec.get("blobs", {})["indices"]
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    indices = np.frombuffer(blob(data, entry, fail), dtype=dtype).astype(np.int64)
    return InputSelect(torch.from_numpy(indices), _args(spec)["in_features"])


# ------------------------------------------------------------------------------- layers with parameters


def _encode_batch_norm(module: nn.Module, quant: QuantSpec | None, blobs: BlobWriter) -> dict[str, Any]:
    spec: dict[str, Any] = {"args": {"num_features": module.num_features, "eps": module.eps,
                                     "momentum": module.momentum, "affine": module.affine,
                                     "track_running_stats": module.track_running_stats}, "blobs": {}}
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(module, name)
        if tensor is not None:
            spec["blobs"][name] = blobs.add_float32(tensor)
    if module.num_batches_tracked is not None:
        spec["num_batches_tracked"] = int(module.num_batches_tracked)
    return spec


def _layer_args(module: nn.Module) -> dict[str, Any]:
    if type(module) is nn.Linear:
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    return {"in_channels": module.in_channels, "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size), "stride": list(module.stride),
            "padding": _tuple_or_value(module.padding), "dilation": list(module.dilation),
            "groups": module.groups, "bias": module.bias is not None, "padding_mode": module.padding_mode}


def _encode_layer(module: nn.Module, quant: QuantSpec | None, blobs: BlobWriter) -> dict[str, Any]:
    """Linear/Conv2d: the weight in its smallest encoding (packed codes if quantised), the bias as float32."""
    spec: dict[str, Any] = {"args": _layer_args(module), "blobs": {}}
    data, info = encode_weight(plan_weight(module.weight, None if quant is None else quant.step))
    spec["blobs"]["weight"] = blobs.add(data, **info)
    if module.bias is not None:
        spec["blobs"]["bias"] = blobs.add_float32(module.bias)
    return spec


def _with_tensors(kind: type[nn.Module]) -> Decoder:
    def decode(spec: dict[str, Any], data: memoryview, fail: Fail, version: int) -> nn.Module:
        return _fill_tensors(kind(**_args(spec)), spec, data, fail, version)
    return decode


_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
              "padding_mode")
_BN_ARGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
register_codec(Normalize, _encode_normalize, _decode_normalize, ("mean", "std"))
register_codec(InputSelect, _encode_input_select, _decode_input_select, ("in_features",), ("indices",))
register_codec(nn.Linear, _encode_layer, _with_tensors(nn.Linear), ("in_features", "out_features", "bias"),
               ("weight", "bias"))
register_codec(nn.Conv2d, _encode_layer, _with_tensors(nn.Conv2d), _CONV_ARGS, ("weight", "bias"))
for _kind in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_codec(_kind, _encode_batch_norm, _with_tensors(_kind), _BN_ARGS,
                   ("weight", "bias", "running_mean", "running_var"), ("num_batches_tracked",))
for _kind, _names in (
    (nn.Flatten, ("start_dim", "end_dim")),
    (nn.ReLU, ("inplace",)),
    (nn.LeakyReLU, ("negative_slope", "inplace")),
    (nn.ELU, ("alpha", "inplace")),
    (nn.GELU, ("approximate",)),
    (nn.Tanh, ()),
    (nn.Sigmoid, ()),
    (nn.SiLU, ("inplace",)),
    (nn.Identity, ()),
    (nn.Dropout, ("p", "inplace")),
    (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")),
    (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                    "divisor_override")),
    (nn.AdaptiveAvgPool2d, ("output_size",)),
):
    _simple(_kind, _names)


def encode_module(index: int, module: nn.Module, quant: QuantSpec | None,
                  blobs: BlobWriter) -> dict[str, Any]:
    """The header spec of one leaf module (its blobs appended to ``blobs``)."""
    codec = MODULE_CODECS[type(module)]
    try:
        return {"type": type(module).__name__, **codec.encode(module, quant, blobs)}
    except ValueError as error:
        raise ValueError(f"module {index} ({type(module).__name__}): {error}") from error


def _check_fields(spec: dict[str, Any], codec: ModuleCodec, fail: Fail) -> None:
    """Refuse spec keys, constructor arguments and blob names the format does not define for this type."""
    for where, given, allowed in (("spec", spec, ("type", "args", "blobs", *codec.extra)),
                                  ("args", spec.get("args", {}), codec.args),
                                  ("blobs", spec.get("blobs", {}), codec.tensors)):
        if not isinstance(given, dict):
            raise fail(f"malformed module spec ({where!r} is a {type(given).__name__}, not an object)")
        unknown = sorted(str(key) for key in given if key not in allowed)
        if unknown:
            raise fail(f"{where} field(s) {', '.join(map(repr, unknown))} are not defined for "
                       f"{codec.kind.__name__} in the packed format "
                       f"(allowed: {', '.join(allowed) or 'none'})")


def decode_module(spec: dict[str, Any], data: memoryview, fail: Fail, version: int) -> nn.Module:
    """Rebuild one leaf module from its spec; only types in the codec table and their declared fields are
    accepted."""
    name = spec.get("type")
    kind = SUPPORTED_TYPES.get(name) if isinstance(name, str) else None
    if kind is None:
        raise fail(f"unknown module type {name!r} (known: {', '.join(sorted(SUPPORTED_TYPES))})")
    codec = MODULE_CODECS[kind]
    _check_fields(spec, codec, fail)
    return codec.decode(spec, data, fail, version)
