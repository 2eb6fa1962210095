"""The import graph of ``src/bayescomp`` has no cycles and respects the layering (STYLE.md):

data -> models -> priors -> (bayesify, objective) -> train -> compress -> methods -> measure/report -> pipeline -> cli

A module may import only modules of its own layer or below. Imports inside functions count: an import moved into
a function to dodge a cycle is still a cycle. The graph is read from the source with ``ast``, nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bayescomp

PACKAGE = Path(bayescomp.__file__).resolve().parent

#: Layer of each top-level module or subpackage of bayescomp (lower imports nothing higher).
LAYERS: dict[str, int] = {
    "modules": 0, "tracing": 0, "validate": 0, "checkpoint": 0, "runlock": 0, "report_schema": 0, "native": 0,
    "noise": 1,
    "hooks": 4,
    "data": 1, "download": 1, "data_sources": 1,
    "models": 2,
    "priors": 3,
    "bayesify": 4, "objective": 4, "distill": 4, "mixed_precision": 4, "calibration": 4, "evaluation": 4, "cuda_graphs": 4,
    "compiled_step": 4,
    "distributed": 5, "train": 5, "loop": 5,
    "compress": 6, "selfcompress": 6,
    "magnitude": 7, "export": 7,
    "methods": 8, "hyper": 8, "hyper.pipeline": 10,
    "measure": 9, "plots": 9, "report": 9, "runtime": 9, "lightning_callback": 9,
    "pipeline": 10, "run_config": 10,
    "cli": 11, "cli_help": 11, "cli_hyper": 11, "cli_tools": 11,
    "__init__": 12,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every bayescomp import in ``path``, at any depth (functions included)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("bayescomp")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.startswith("bayescomp"):
                found.append((module, [alias.name for alias in node.names]))
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the bayescomp modules it imports (``from pkg import submodule`` points at the submodule only)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for module, names in _imports(path):
            submodules = {f"{module}.{n}" for n in names if f"{module}.{n}" in files}
            targets |= submodules
            if len(submodules) < len(names) or not names:
                targets.add(module)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if ".".join(parts[1:3]) in LAYERS:  # a submodule placed on its own layer (e.g. hyper.pipeline)
        return ".".join(parts[1:3]), LAYERS[".".join(parts[1:3])]
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"{module}: add its top-level name {key!r} to LAYERS in this test"
    return key, LAYERS[key]


def test_no_upward_imports():
    wrong = []
    for module, targets in _graph().items():
        key, level = _layer(module)
        for target in targets:
            target_key, target_level = _layer(target)
            if target_level > level:
                wrong.append(f"{module} ({key}, layer {level}) imports {target} ({target_key}, layer {target_level})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its submodules is not a cycle with them: drop edges from a package
    to its own submodules."""
    return {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}


def test_no_import_cycles():
    cycles = _cycles(_without_package_inits(_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("forbidden", ["bayescomp.train", "bayescomp.cli", "bayescomp.pipeline"])
def test_compression_never_imports_training_or_the_cli(forbidden):
    graph = _graph()
    offenders = [m for m, targets in graph.items() if m.startswith("bayescomp.compress")
                 and any(t == forbidden or t.startswith(forbidden + ".") for t in targets)]
    assert not offenders, f"{offenders} import {forbidden}"


def test_one_list_of_weightless_modules():
    hits = [p for p in PACKAGE.rglob("*.py") if "PASS_THROUGH" in p.read_text() and "PASS_THROUGH:" in p.read_text()]
    assert len(hits) <= 1, f"more than one list of weightless modules: {hits}"
