"""The layer rule of docs/architecture.md (numbered from 1 there, from 0 here), checked on
the source: no module imports a module of a higher layer, the two roles (outbox, consumer)
and the two kinds of infrastructure (brokers, databases) do not import each other, and
module-level imports form no circle.

Imports are read from the source, including those inside functions (a lazy import is still a
dependency) and excluding ``if TYPE_CHECKING:`` blocks (annotations only).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: Lowest first. A module belongs to the longest prefix listed; every module must match one.
LAYERS: list[tuple[str, ...]] = [
    ("txmq.errors", "txmq.states", "txmq.message"),
    ("txmq.config", "txmq.lifecycle", "txmq.wire"),
    ("txmq.adapters", "txmq.sql", "txmq.database", "txmq.database_errors"),
    ("txmq.supervision", "txmq.telemetry", "txmq.tracing"),
    ("txmq.outbox", "txmq.consumer"),
    ("txmq.saga",),
    ("txmq", "txmq.aio", "txmq.metrics", "txmq.schema_check", "txmq.unroutable"),
    ("txmq.process", "txmq.doctor"),
    ("txmq.testing",),
    ("txmq.cli", "txmq.demo", "txmq.chaos", "txmq.saga.demo"),
    ("txmq.testing.contract",),
]

#: Pairs of the same layer that must not know each other (either direction).
INDEPENDENT: list[tuple[str, str]] = [
    ("txmq.outbox", "txmq.consumer"),
    ("txmq.adapters", "txmq.sql"),
    ("txmq.adapters", "txmq.database"),
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, top_level_only: bool) -> Iterator[str]:
    """The txmq modules ``tree`` imports: ``from a import b`` names both ``a`` and ``a.b``;
    :func:`_graph` keeps ``a.b`` alone where it is a module (importing a submodule of a
    package runs the package's ``__init__`` first in any case, which is no dependency)."""

    def visit(node: ast.AST, nested: bool) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and not child.level:
                if child.module.split(".")[0] == "txmq" and not (top_level_only and nested):
                    yield child.module
                    for alias in child.names:
                        yield f"{child.module}.{alias.name}"
            elif isinstance(child, ast.Import) and not (top_level_only and nested):
                for alias in child.names:
                    if alias.name.split(".")[0] == "txmq":
                        yield alias.name
            yield from visit(child, inner)

    yield from visit(tree, False)


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    trees = {_module(p): ast.parse(p.read_text()) for p in (SRC / "txmq").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        named = set(_imports(tree, top_level_only=top_level_only))
        # "from package import module": the module is the dependency, not the package.
        graph[name] = {
            m
            for m in named
            if m in trees and not any(other.startswith(m + ".") for other in named & trees.keys())
        } - {name}
    return graph


def _layer(module: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (number, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it (and to the doc)")
    return best


def test_every_module_has_a_layer() -> None:
    for module in _graph(top_level_only=False):
        _layer(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{importer} (layer {_layer(importer)[0]}) imports {imported} (layer {_layer(imported)[0]})"
        for importer, imported_set in sorted(_graph(top_level_only=False).items())
        for imported in sorted(imported_set)
        if _layer(imported)[0] > _layer(importer)[0]
    ]
    assert upward == []


@pytest.mark.parametrize(("one", "other"), INDEPENDENT)
def test_independent_parts_do_not_import_each_other(one: str, other: str) -> None:
    def within(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    crossing = [
        f"{importer} imports {imported}"
        for importer, imported_set in sorted(_graph(top_level_only=False).items())
        for imported in sorted(imported_set)
        for a, b in ((one, other), (other, one))
        if within(importer, a) and within(imported, b)
    ]
    assert crossing == []


def test_module_level_imports_form_no_circle() -> None:
    graph = _graph(top_level_only=True)
    # A package's __init__ importing its own modules is how packages re-export: not a circle
    # unless a module of the package imports the package back at import time.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    assert circles == []
