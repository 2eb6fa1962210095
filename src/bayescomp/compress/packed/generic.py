"""Modules outside the leaf table: stored with their own parameters, buffers and plain attributes (version 4).

A user's normalisation layer with ``mean``/``std`` buffers, or a block with a learned scale, is stored as a
module tree node that also lists its tensors (name, parameter or buffer, dtype, shape, blob) and its plain
attributes. Loading rebuilds it like every tree node (an allowlisted class, no constructor call), then
registers the tensors with their saved values. What could not be rebuilt this way is refused when saving, with
a message that says what to change: a tensor held in a plain attribute, a private attribute, or an attribute
that is not plain data (docs/file-format.md, "Own tensors").
"""

from __future__ import annotations

import keyword
from typing import Any

import torch
from torch import nn

from bayescomp.compress.packed.blobs import BlobWriter, add_tensor, read_tensor
from bayescomp.compress.packed.format import DECODE_ERRORS, Fail, PackedFormatError

_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # what nn.Module.__init__ sets: rebuilt, never stored
_SCALARS = (bool, int, float, str, type(None))
_PLAIN_TYPES = "int, float, bool, str, None, or lists/tuples of them"
_BLOB_FIELDS = frozenset({"offset", "length", "dtype", "shape"})
_ENTRY_FIELDS = {"parameter": _BLOB_FIELDS | {"kind", "requires_grad"},
                 "buffer": _BLOB_FIELDS | {"kind", "persistent"}}


def holds_tensors(module: nn.Module) -> bool:
    """Whether ``module`` registers parameters or buffers of its own (``None`` entries included)."""
    return bool(module._parameters) or bool(module._buffers)


def _where(name: str, module: nn.Module) -> str:
    return f"module {name or '<root>'!r} ({type(module).__name__})"


def check_no_tensor_attributes(module: nn.Module, name: str) -> None:
    """Refuse a tensor kept in a plain attribute: a packed file stores parameters and buffers only, so the
    loaded model would lack it."""
    for key, value in vars(module).items():
        if key not in _MODULE_INTERNALS and isinstance(value, torch.Tensor):
            raise ValueError(
                f"{_where(name, module)}: attribute {key!r} is a tensor that is neither a parameter nor a "
                "buffer, so a packed file cannot store it; register it in __init__ with "
                f"self.register_buffer({key!r}, tensor) (or make it an nn.Parameter if it is learned)")


def _not_plain(value: Any, sequence: type | None = None) -> str | None:
    """Why ``value`` is not a plain attribute value (None if it is). Each nested sequence must be of the same
    kind (all lists or all tuples) so that loading gives back exactly what was saved."""
    if type(value) in _SCALARS:
        return None
    if type(value) in (list, tuple):
        if sequence is not None and type(value) is not sequence:
            return "mixes lists and tuples"
        return next((r for item in value if (r := _not_plain(item, type(value))) is not None), None)
    kind = type(value)
    return f"holds a {'' if kind.__module__ == 'builtins' else kind.__module__ + '.'}{kind.__qualname__}"


def _private_attribute_error(module: nn.Module, name: str, key: str) -> str:
    """What to do about a private attribute: the user's own can be renamed; torch's layers set some that no
    file restores (then the layer is not one the format can store)."""
    cls = type(module)
    torch_layer = next((base for base in cls.__mro__ if base.__module__.startswith("torch.")
                        and base is not nn.Module), None)
    message = (f"{_where(name, module)}: attribute {key!r} is private, and a packed file restores only "
               "public attributes; ")
    if torch_layer is not None:
        return message + (f"if torch's {torch_layer.__name__} sets it, that layer cannot be stored (stored "
                          "layer types: docs/file-format.md, \"Leaf modules\"); if your code sets it, rename "
                          f"it to {key.lstrip('_')!r}")
    return message + (f"rename it to {key.lstrip('_')!r}, or, if it is the same for every instance, make "
                      f"it a class attribute of {cls.__name__} (the class comes from your code: "
                      f"classes=[{cls.__name__}])")


def _plain_attrs(module: nn.Module, name: str) -> tuple[dict[str, Any], list[str]]:
    """The instance attributes of a module with tensors, and which of them are tuples; refuses the rest."""
    cls = type(module).__name__
    attrs, tuples = {}, []
    for key, value in vars(module).items():
        if key in _MODULE_INTERNALS:
            continue
        if key.startswith("_"):
            raise ValueError(_private_attribute_error(module, name, key))
        reason = _not_plain(value)
        if reason is not None:
            raise ValueError(
                f"{_where(name, module)}: attribute {key!r} {reason}, which a packed file cannot store "
                f"(plain values only: {_PLAIN_TYPES}); make it a plain value, or, if it is the same for "
                f"every instance, a class attribute of {cls} (the class comes from your code: "
                f"classes=[{cls}])")
        attrs[key] = value
        if type(value) is tuple:
            tuples.append(key)
    return attrs, tuples


def _tensor_entries(module: nn.Module, name: str, blobs: BlobWriter) -> dict[str, Any]:
    """Header entries of the module's own parameters and buffers, their values appended to ``blobs``."""
    entries: dict[str, Any] = {}
    for kind, table in (("parameter", module._parameters), ("buffer", module._buffers)):
        for key, tensor in table.items():
            entry: dict[str, Any] = {"kind": kind}
            if tensor is not None:
                try:
                    entry.update(add_tensor(blobs, tensor))
                except ValueError as error:
                    raise ValueError(f"{_where(name, module)}: {kind} {key!r}: {error}") from error
                if kind == "parameter":
                    entry["requires_grad"] = tensor.requires_grad
            if kind == "buffer" and key in module._non_persistent_buffers_set:
                entry["persistent"] = False
            entries[key] = entry
    return entries


def generic_fields(module: nn.Module, name: str, blobs: BlobWriter) -> dict[str, Any]:
    """The tree node fields of a module with tensors of its own: ``attrs``, ``tuples`` (if any), ``tensors``.

    Raises:
        ValueError: naming the module path and attribute, for what the format cannot rebuild.
    """
    check_no_tensor_attributes(module, name)
    attrs, tuples = _plain_attrs(module, name)
    fields: dict[str, Any] = {"attrs": attrs}
    if tuples:
        fields["tuples"] = tuples
    fields["tensors"] = _tensor_entries(module, name, blobs)
    return fields


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(item) for item in value) if isinstance(value, list) else value


def restore_tuples(attrs: dict[str, Any], tuples: Any, fail: Fail) -> dict[str, Any]:
    """``attrs`` with the attributes named in ``tuples`` (saved as tuples, lists in JSON) as tuples again."""
    if not isinstance(tuples, list) or not all(isinstance(k, str) and isinstance(attrs.get(k), list)
                                               for k in tuples):
        raise fail(f"malformed 'tuples' {str(tuples)[:60]} (names of list-valued attributes)")
    return {key: _as_tuples(value) if key in tuples else value for key, value in attrs.items()}


def _check_entry(cls: type, module: nn.Module, key: Any, entry: Any, taken: set[str], fail: Fail) -> str:
    """The kind of one tensor entry after checking its name and fields; refuses anything that would replace a
    member of the class, a child or an attribute."""
    if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key) or key.startswith("__"):
        raise fail(f"tensor name {str(key)[:60]!r} is not an identifier the format allows")
    if key in taken or hasattr(cls, key) or key in module._parameters or key in module._buffers:
        raise fail(f"tensor {key!r} would replace a member, attribute or child of {cls.__name__}")
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind not in _ENTRY_FIELDS:
        raise fail(f"tensor {key!r} has kind {kind!r} (expected 'parameter' or 'buffer')")
    unknown = sorted(str(field) for field in entry if field not in _ENTRY_FIELDS[kind])
    if unknown:
        raise fail(f"tensor {key!r}: field(s) {', '.join(map(repr, unknown))} are not defined for a {kind}")
    if _BLOB_FIELDS & entry.keys() and not _BLOB_FIELDS <= entry.keys():
        raise fail(f"tensor {key!r} needs all of offset, length, dtype and shape, or none (a None {kind})")
    return kind


def attach_tensors(module: nn.Module, entries: Any, data: memoryview, taken: set[str], fail: Fail) -> None:
    """Register the stored parameters and buffers on a module built without its constructor."""
    cls = type(module)
    if cls in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
        raise fail(f"{cls.__name__} holds no tensors of its own")
    if not isinstance(entries, dict):
        raise fail("malformed 'tensors' (not an object)")
    for key, entry in entries.items():
        kind = _check_entry(cls, module, key, entry, taken, fail)
        flag = entry.get("requires_grad" if kind == "parameter" else "persistent", True)
        if type(flag) is not bool:
            raise fail(f"tensor {key!r}: requires_grad / persistent must be true or false")
        def tensor_fail(message: str, key: str = key) -> PackedFormatError:
            return fail(f"tensor {key!r}: {message}")

        try:
            tensor = read_tensor(data, entry, tensor_fail) if "dtype" in entry else None
        except DECODE_ERRORS as error:
            raise fail(f"tensor {key!r}: malformed entry ({type(error).__name__}: {error})") from error
        if kind == "buffer":
            module.register_buffer(key, tensor, persistent=flag)
        elif tensor is not None and flag and not (tensor.is_floating_point() or tensor.is_complex()):
            raise fail(f"tensor {key!r}: a {tensor.dtype} parameter cannot require gradients")
        else:
            parameter = None if tensor is None else nn.Parameter(tensor, requires_grad=flag)
            module.register_parameter(key, parameter)

