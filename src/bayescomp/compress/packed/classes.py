"""The allowlist of classes a packed file may rebuild (the module tree's ``"class"`` entries).

A file is data, so loading it never imports a module it names: a ``"class"`` string is only looked up among
classes that are already imported and trusted. Those are torch's containers and bayescomp's own models
(:data:`BUILTIN_CLASSES`), classes registered once with :func:`register_packable`, and the classes the caller
passes to ``load_packed(path, classes=[...])``: containers, and modules outside the leaf table that are stored
with their own tensors (:mod:`bayescomp.compress.packed.generic`). A node's ``"attrs"`` may hold only plain
data attributes (:func:`check_attrs`); see docs/file-format.md, "Module tree".
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable
from typing import Any

from torch import nn

from bayescomp.compress.packed.format import PackedFormatError
from bayescomp.compress.packed.modules import SUPPORTED_TYPES
from bayescomp.models.resnet import BasicBlock, CifarResNet

_TORCH_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
BUILTIN_CLASSES: tuple[type[nn.Module], ...] = (*_TORCH_CONTAINERS, CifarResNet, BasicBlock)
_REGISTERED: dict[str, type[nn.Module]] = {}
_PLAIN = (bool, int, float, str, type(None), list, tuple, dict)


class UntrustedClassError(PackedFormatError):
    """A packed file names a class that is neither on the allowlist nor passed by the caller."""


def dotted_name(cls: type) -> str:
    """The name a packed file stores for ``cls``: ``module.qualname``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_class(cls: Any, where: str) -> type[nn.Module]:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{where}: {cls!r} is not an nn.Module class; pass the class itself, e.g. "
                        "classes=[MyNet]")
    if cls in SUPPORTED_TYPES.values():
        raise TypeError(f"{where}: {cls.__name__} is a leaf type the format stores itself; pass only the "
                        "container classes of your model")
    return cls


def register_packable(cls: type[nn.Module]) -> type[nn.Module]:
    """Trust ``cls`` as a class of packed files from now on (usable as a class decorator): a container, or
    a module of your own that the file stores with its parameters and buffers.

    Loading a file that names ``cls`` then rebuilds it without ``classes=[...]``. Register only your own
    classes: a registered class's ``forward`` runs on whatever leaves a file gives it.
    """
    _REGISTERED[dotted_name(_check_class(cls, "register_packable"))] = cls
    return cls


def container_classes(model: nn.Module) -> list[type[nn.Module]]:
    """The classes of ``model``'s modules outside the leaf table (containers and modules stored with their own
    tensors), e.g. to check a packed copy of a model you built yourself:
    ``load_packed(path, classes=container_classes(model))``."""
    found = {type(module) for module in model.modules() if type(module) not in SUPPORTED_TYPES.values()}
    return sorted(found, key=dotted_name)


def unregister_packable(cls: type[nn.Module]) -> None:
    """Undo :func:`register_packable` (nothing happens for a class that is not registered)."""
    if _REGISTERED.get(dotted_name(cls)) is cls:
        del _REGISTERED[dotted_name(cls)]


class ClassResolver:
    """Looks up a file's class names among the built-in, registered and passed classes; never imports."""

    def __init__(self, classes: Iterable[type[nn.Module]] = ()) -> None:
        passed = [_check_class(cls, "classes") for cls in classes]
        self.builtin = {dotted_name(cls): cls for cls in BUILTIN_CLASSES}
        self.user = {**_REGISTERED, **{dotted_name(cls): cls for cls in passed}}

    def resolve(self, name: str, path: Any) -> type[nn.Module]:
        """The class a file names. A user class also matches by its qualified name alone, so a model saved
        from a script (``__main__.MyNet``) loads with ``classes=[MyNet]`` imported from a module.

        Raises:
            UntrustedClassError: no trusted class has that name (or several user classes share it).
        """
        if name in self.builtin:
            return self.builtin[name]
        if name in self.user:
            return self.user[name]
        by_qualname = {cls for cls in self.user.values() if name.endswith("." + cls.__qualname__)}
        if len(by_qualname) == 1:
            return by_qualname.pop()
        short = name.rpartition(".")[2] or name
        raise UntrustedClassError(
            f"{path}: the file names the class {name!r}, which is not on the allowlist of classes a packed "
            "file may rebuild (torch.nn containers, bayescomp's models, registered classes); a file never "
            f"imports code. If you trust the file and {short} is your model's class, pass it: "
            f"bayescomp.load(path, classes=[{short}]) or load_packed(path, classes=[{short}]), or call "
            f"bayescomp.register_packable({short}) once")


def check_attrs(cls: type[nn.Module], attrs: Any, children: set[str], path: Any) -> dict[str, Any]:
    """The container attributes a file may set: none on torch's containers; on other classes only public
    plain-data instance attributes that shadow no method, property or module internals and no child."""
    if not isinstance(attrs, dict):
        raise PackedFormatError(f"{path}: malformed module tree attrs for {cls.__name__} (not an object)")
    for key, value in attrs.items():
        reason = None
        if cls in _TORCH_CONTAINERS:
            reason = f"{cls.__name__} has no stored attributes"
        elif not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key) or key[0] == "_":
            reason = "only public identifiers may be set"
        elif key == "training" or key in children:
            reason = "it would replace the module's training flag or a child module"
        elif hasattr(cls, key) and not isinstance(getattr(cls, key), _PLAIN):
            reason = f"it would shadow {cls.__name__}.{key} (a method, property or other class attribute)"
        elif not isinstance(value, _PLAIN):
            reason = "only JSON values may be set"
        if reason is not None:
            raise PackedFormatError(f"{path}: module tree sets attribute {str(key)[:60]!r} on "
                                    f"{cls.__name__}, which the packed format does not allow ({reason})")
    return attrs
