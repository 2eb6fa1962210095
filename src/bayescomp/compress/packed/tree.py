"""Networks that are not a flat Sequential: the leaves in depth-first order plus a tree of containers.

A ResNet or a user's ``nn.Module`` with residual connections is stored as its supported leaf modules (the
module codec table) and a ``"tree"`` header entry naming each container's class, its plain JSON attributes and
its children. Loading looks each class up on the allowlist (:mod:`bayescomp.compress.packed.classes`; a file
never makes us import anything) and rebuilds it without calling its constructor, so its own ``forward`` runs
on the stored leaves (docs/file-format.md, "Module tree").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from bayescomp.compress.packed.classes import ClassResolver, check_attrs
from bayescomp.compress.packed.format import PackedFormatError
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


def _import_class(dotted: str) -> type:
    """The class of a live module by its own dotted name (used when saving, to check a loader can name it;
    never called with a name read from a file)."""
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


def tree_of(module: nn.Module, leaves: list[nn.Module], name: str = "") -> dict[str, Any] | int:
    """The ``"tree"`` header entry of ``module``: leaf indices for supported leaves, nodes for containers.

    Raises:
        ValueError: a container holds its own tensors, or its class is not importable by name.
    """
    if type(module) in SUPPORTED_TYPES.values():
        return next(i for i, leaf in enumerate(leaves) if leaf is module)
    if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
        raise ValueError(f"module {name or '<root>'!r} ({type(module).__name__}) holds its own tensors and "
                         "cannot be stored in a packed file; supported leaf types: "
                         f"{', '.join(sorted(SUPPORTED_TYPES))}")
    attrs = _plain_attrs(module)
    cls = type(module)
    dotted = f"{cls.__module__}.{cls.__qualname__}"
    try:
        importable = _import_class(dotted) is cls
    except (ImportError, AttributeError):
        importable = False
    if not importable:
        raise ValueError(f"module {name or '<root>'!r} ({cls.__name__}) cannot be stored in a packed file: "
                         f"its class is not importable as {dotted!r} (define it at module level); supported "
                         "leaf types: "
                         f"{', '.join(sorted(SUPPORTED_TYPES))}")
    return {"class": dotted, "attrs": attrs,
            "children": [[child_name, tree_of(child, leaves, f"{name}.{child_name}" if name else child_name)]
                         for child_name, child in module.named_children()]}


def build_tree(node: Any, leaves: list[nn.Module], path: Path, resolver: ClassResolver) -> nn.Module:
    """Rebuild the module tree over the decoded leaves, with classes from ``resolver`` only."""
    if isinstance(node, int) and not isinstance(node, bool):
        if not 0 <= node < len(leaves):
            raise PackedFormatError(f"{path}: module tree names leaf {node}, the file has {len(leaves)}")
        return leaves[node]
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise PackedFormatError(f"{path}: malformed module tree node {str(node)[:80]!r}")
    cls = resolver.resolve(node["class"], path)
    children = node.get("children") or []
    if not isinstance(children, list) or not all(isinstance(c, list) and len(c) == 2 for c in children):
        raise PackedFormatError(f"{path}: malformed children of module tree node {node['class']!r}")
    attrs = check_attrs(cls, node.get("attrs") or {}, {str(name) for name, _ in children}, path)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in attrs.items():
        setattr(module, key, value)
    for name, child in children:
        module.add_module(str(name), build_tree(child, leaves, path, resolver))
    return module
