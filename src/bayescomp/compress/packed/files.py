"""Saving and loading whole models: :func:`save_packed` and :func:`load_packed` (docs/file-format.md)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from bayescomp.compress.packed.blobs import BlobWriter
from bayescomp.compress.packed.classes import ClassResolver
from bayescomp.compress.packed.container import read_checked, write_container
from bayescomp.compress.packed.format import (
    DECODE_ERRORS, FORMAT_VERSION, RESERVED_KEY, TENSOR_VERSION, TREE_VERSION, PackedFormatError, PathLike,
    QuantSpec, module_fail,
)
from bayescomp.compress.packed.modules import decode_module, encode_module
from bayescomp.compress.packed.tree import build_tree, has_tensors, is_flat, packed_leaves, tree_of


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


def save_packed(model: nn.Module, path: PathLike, quant: dict[int, QuantSpec] | None = None,
                metadata: dict | None = None) -> int:
    """Write ``model`` to ``path`` atomically in the packed format; returns the number of bytes written.

    Args:
        model: an ``nn.Sequential`` of the supported module types (:data:`SUPPORTED_TYPES`), or any module
            tree whose leaves are of those types (stored with a module tree, format version 3). A module of
            another type is stored with its own parameters, buffers and plain attributes (version 4); its
            class, like a container's, must be passed to (or registered for) the loader.
        quant: module index (position in :func:`packed_leaves`) -> :class:`QuantSpec` for the Linear/Conv2d
            layers stored as packed integer codes (weights off the grid are rounded to it with
            ``floor(w / step + 0.5)``).
        metadata: JSON-serialisable dict stored in the header and returned by :func:`load_packed`.

    Raises:
        ValueError: a module the format cannot rebuild (the message names it and says what to change), a bad
            ``quant`` entry, or metadata that is not JSON-serialisable.
    """
    quant = dict(quant or {})
    metadata = dict(metadata or {})
    if RESERVED_KEY in metadata:
        raise ValueError(f"metadata key {RESERVED_KEY!r} is reserved for the packed format")
    _check_model(model, quant)
    blobs = BlobWriter()
    leaves = packed_leaves(model)
    specs = [encode_module(i, m, quant.get(i), blobs) for i, m in enumerate(leaves)]
    content: dict[str, Any] = {"modules": specs, "metadata": metadata}
    version = FORMAT_VERSION
    if not is_flat(model):
        content["tree"] = tree_of(model, leaves, blobs)
        version = TENSOR_VERSION if has_tensors(content["tree"]) else TREE_VERSION
    return write_container(Path(path), version, content, blobs.parts, blobs.size)


def _decode_leaves(path: Path, header: dict[str, Any], data: memoryview,
                   version: int) -> tuple[list[nn.Module], dict[str, Any]]:
    """Every leaf module of the file and the ``"_packed"`` summary (bits, steps, encodings by index)."""
    modules: list[nn.Module] = []
    bits: dict[int, int] = {}
    steps: dict[int, float] = {}
    encodings: dict[int, str] = {}
    for index, spec in enumerate(header["modules"]):
        fail = module_fail(path, index, spec)
        if not isinstance(spec, dict):
            raise fail("malformed module spec")
        try:
            modules.append(decode_module(spec, data, fail, version))
        except PackedFormatError:
            raise
        except DECODE_ERRORS as error:
            raise fail(f"malformed module spec ({type(error).__name__}: {error})") from error
        weight = spec.get("blobs", {}).get("weight", {})
        if weight.get("dtype") == "packed":
            bits[index], steps[index] = int(weight["bits"]), float(weight["step"])
        if spec["type"] in ("Linear", "Conv2d") and weight:
            encodings[index] = weight.get("encoding", "dense")
    return modules, {"version": version, "bits": bits, "steps": steps, "encodings": encodings}


def load_packed(path: PathLike, classes: Iterable[type[nn.Module]] = ()) -> tuple[nn.Module, dict]:
    """Read a packed file (format version 1 to 4); returns the model (in eval mode) and its metadata.

    Version-1/2 files hold an ``nn.Sequential``; version-3/4 files rebuild the stored module tree (version 4:
    with modules that store their own parameters and buffers). Loading never imports a module named in the
    file: a tree's classes must be torch containers, bayescomp's models, classes registered with
    :func:`register_packable`, or among ``classes`` (your own model's classes, e.g.
    ``classes=[MyNet, MyBlock, MyNorm]``).

    The metadata is the dict given to :func:`save_packed` plus the reserved key ``"_packed"``:
    ``{"version": int (of the file), "bits": {module index: bits per stored value}, "steps": {module index:
    step}}`` for the quantised layers, and ``"encodings": {module index: encoding}`` for every Linear/Conv2d.

    Raises:
        PackedFormatError: the file is not a packed file, has another version, is truncated, corrupted or
            malformed (including inconsistent sparse weights), or names a module type this version does not
            know. The message names the file. :class:`UntrustedClassError` (a subclass) when the tree names a
            class outside the allowlist and ``classes``; the message names the class and says how to pass it.
        TypeError: an entry of ``classes`` is not an ``nn.Module`` container class.
    """
    resolver = ClassResolver(classes)
    path = Path(path)
    header, data, version = read_checked(path)
    modules, summary = _decode_leaves(path, header, data, version)
    metadata = dict(header.get("metadata") or {})
    metadata[RESERVED_KEY] = summary
    if version >= TREE_VERSION and "tree" in header:
        return build_tree(header["tree"], modules, path, resolver, data, version).eval(), metadata
    return nn.Sequential(*modules).eval(), metadata
