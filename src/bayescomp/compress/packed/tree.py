"""Networks that are not a flat Sequential: the leaves in depth-first order plus a tree of containers.

A ResNet or a user's ``nn.Module`` with residual connections is stored as its supported leaf modules (the
module codec table) and a ``"tree"`` header entry naming each container's class, its plain JSON attributes and
its children; a module the table does not know that holds parameters or buffers of its own also lists them
(:mod:`bayescomp.compress.packed.generic`, version 4). Loading looks each class up on the allowlist
(:mod:`bayescomp.compress.packed.classes`; a file never makes us import anything) and rebuilds it without
calling its constructor, so its own ``forward`` runs on the stored leaves (docs/file-format.md, "Module
tree").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from bayescomp.compress.packed.blobs import BlobWriter
from bayescomp.compress.packed.classes import ClassResolver, check_attrs
from bayescomp.compress.packed.format import TENSOR_VERSION, PackedFormatError
from bayescomp.compress.packed.generic import (
    attach_tensors, check_no_tensor_attributes, generic_fields, holds_tensors, restore_tuples,
)
from bayescomp.compress.packed.modules import SUPPORTED_TYPES


def is_flat(model: nn.Module) -> bool:
    """Whether ``model`` is a Sequential of supported leaf modules (stored without a module tree)."""
    return type(model) is nn.Sequential and all(type(m) in SUPPORTED_TYPES.values() for m in model)


def packed_leaves(model: nn.Module) -> list[nn.Module]:
    """The modules a packed file stores one spec for, in file order (``quant`` keys index this list)."""
    if is_flat(model):
        return list(model)
    if type(model) in SUPPORTED_TYPES.values():
        return [model]
    return [leaf for child in model.children() for leaf in packed_leaves(child)]


def _named_class(cls: type) -> type | None:
    """What ``cls``'s module-level name resolves to in its (already loaded) module, or ``None``: a class a loader
    can name is found there under ``__qualname__``; a local or replaced class is not. Nothing is imported."""
    owner: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        owner = getattr(owner, part, None)
    return owner


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    """The container's public instance attributes that are plain JSON values (stored in the tree)."""
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        attrs[key] = value
    return attrs


def tree_of(module: nn.Module, leaves: list[nn.Module], blobs: BlobWriter,
            name: str = "") -> dict[str, Any] | int:
    """The ``"tree"`` header entry of ``module``: leaf indices for supported leaves, nodes for the rest (with
    their own parameters and buffers appended to ``blobs``).

    Raises:
        ValueError: a module's class is not importable by name, or it holds something the format cannot
            rebuild (the message names the module path and attribute and says what to change).
    """
    if type(module) in SUPPORTED_TYPES.values():
        return next(i for i, leaf in enumerate(leaves) if leaf is module)
    cls = type(module)
    dotted = f"{cls.__module__}.{cls.__qualname__}"
    if _named_class(cls) is not cls:
        what = ("holds its own tensors, which a packed file stores only for a class that a loader can name, "
                "but" if holds_tensors(module) else "cannot be stored in a packed file:")
        raise ValueError(f"module {name or '<root>'!r} ({cls.__name__}) {what} its class is not importable "
                         f"as {dotted!r} (define it at module level); supported leaf types: "
                         f"{', '.join(sorted(SUPPORTED_TYPES))}")
    if holds_tensors(module):
        fields = generic_fields(module, name, blobs)
    else:
        check_no_tensor_attributes(module, name)
        fields = {"attrs": _plain_attrs(module)}
    children = [[child_name, tree_of(child, leaves, blobs, f"{name}.{child_name}" if name else child_name)]
                for child_name, child in module.named_children()]
    return {"class": dotted, **fields, "children": children}


def has_tensors(node: Any) -> bool:
    """Whether a tree entry stores a module's own tensors anywhere (the file is then version 4)."""
    return isinstance(node, dict) and ("tensors" in node or any(has_tensors(c) for _, c in node["children"]))


_NODE_FIELDS = ("class", "attrs", "children")
_TENSOR_NODE_FIELDS = (*_NODE_FIELDS, "tuples", "tensors")  # version 4


def build_tree(node: Any, leaves: list[nn.Module], path: Path, resolver: ClassResolver, data: memoryview,
               version: int) -> nn.Module:
    """Rebuild the module tree over the decoded leaves, with classes from ``resolver`` only (and, from version
    4 on, the nodes' own tensors from ``data``)."""
    if isinstance(node, int) and not isinstance(node, bool):
        if not 0 <= node < len(leaves):
            raise PackedFormatError(f"{path}: module tree names leaf {node}, the file has {len(leaves)}")
        return leaves[node]
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise PackedFormatError(f"{path}: malformed module tree node {str(node)[:80]!r}")
    cls = resolver.resolve(node["class"], path)

    def fail(message: str) -> PackedFormatError:
        return PackedFormatError(f"{path}: module tree node {node['class']!r}: {message}")

    allowed = _TENSOR_NODE_FIELDS if version >= TENSOR_VERSION else _NODE_FIELDS
    unknown = sorted(str(key) for key in node if key not in allowed)
    if unknown:
        raise fail(f"field(s) {', '.join(map(repr, unknown))} are not defined in a version-{version} file")
    children = node.get("children") or []
    if not isinstance(children, list) or not all(isinstance(c, list) and len(c) == 2 for c in children):
        raise PackedFormatError(f"{path}: malformed children of module tree node {node['class']!r}")
    tensors = node.get("tensors") or {}
    taken = {str(name) for name, _ in children}
    tensor_names = set(tensors) if isinstance(tensors, dict) else set()
    attrs = check_attrs(cls, node.get("attrs") or {}, taken | tensor_names, path)
    if "tuples" in node:
        attrs = restore_tuples(attrs, node["tuples"], fail)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    if "tensors" in node:
        attach_tensors(module, tensors, data, taken | set(attrs), fail)
    for key, value in attrs.items():
        setattr(module, key, value)
    for name, child in children:
        module.add_module(str(name), build_tree(child, leaves, path, resolver, data, version))
    return module
