"""The shape ARCHITECTURE.md draws: no import cycle between coins-sync's modules.

Every ``import`` counts, also one inside a function or under ``TYPE_CHECKING``, and
importing ``a.b.c`` counts as importing the packages ``a.b`` too (their ``__init__``
runs first), which is how ``apply`` and ``workspace`` used to close a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import coins_sync

PACKAGE = Path(coins_sync.__file__).parent
#: Left to the PostgreSQL backend's own restructuring (issue 20, its own helper).
PENDING = "coins_sync.state.postgres"


def module_graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("coins_sync", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                found = resolve(target) if target.startswith("coins_sync") else None
                if found is None:
                    continue
                pieces = found.split(".")
                for end in range(2, len(pieces) + 1):  # the packages on the way run first
                    step = ".".join(pieces[:end])
                    if step in modules and step != name and not name.startswith(step + "."):
                        graph[name].add(step)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = module_graph()
    assert "coins_sync.workspace" in graph["coins_sync.apply.run"]
    assert {"coins_sync.apply", "coins_sync.apply.adopt"} <= graph["coins_sync.cli.state"]
    found = [c for c in cycles(graph) if not all(m.startswith(PENDING) for m in c)]
    assert found == []
