"""The package's import graph: no cycle, and imports flow one way (CLI -> library -> models -> ops).

Every module is parsed with ``ast`` and every ``serpent_cli`` import is followed, including the ones inside
functions (lazy imports still make a dependency; hiding one in a function is how the old circle between the
weights loader, the registry and the Hub client survived).  Imports under ``if TYPE_CHECKING:`` are left out:
they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "serpent_cli"

# Layers, bottom first: a module may import its own layer's modules (without a cycle) or lower layers'.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "atomic", "threads", "interrupts", "device", "distributed", "numba_setup"),
    ("ops",),
    ("models",),
    ("io", "degradation", "hub"),
    ("factory",),
    ("restore", "evaluation", "training", "bench"),
    ("cli", "__main__"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str], here: str, is_package: bool) -> set[str]:
    """The serpent_cli modules ``tree`` imports (a name imported from a package counts as its submodule)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "serpent_cli")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".") if is_package else here.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] == "serpent_cli":
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                found.update(subs or [base])
                if len(subs) < len(node.names):
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != here}


def import_graph() -> dict[str, set[str]]:
    """Module -> the serpent_cli modules it imports, for every module of the package."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(ast.parse(path.read_text(encoding="utf-8")), modules, name, path.name == "__init__.py")
            for name, path in paths.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else None
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return None  # the package root: its lazy names point anywhere below the CLI


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := walk(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)) is not None:
            return cycle
    return None


def test_graph_sees_lazy_imports() -> None:
    """The checker itself: a function-level import is an edge, a TYPE_CHECKING one is not."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from serpent_cli.cli import common\n"
                     "def f():\n    from serpent_cli.models import registry\n    import serpent_cli.errors\n")
    modules = {"serpent_cli.cli", "serpent_cli.cli.common", "serpent_cli.models", "serpent_cli.models.registry",
               "serpent_cli.errors", "serpent_cli.x"}
    assert _imports(tree, modules, "serpent_cli.x", False) == {"serpent_cli.models.registry", "serpent_cli.errors"}
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 80  # the package was really read
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


def test_only_the_cli_imports_the_cli() -> None:
    offenders = sorted(f"{m} imports {t}" for m, targets in import_graph().items() if _layer(m) != len(LAYERS) - 1
                       for t in targets if t.startswith("serpent_cli.cli"))
    assert offenders == []


def test_imports_flow_down_the_layers() -> None:
    """CLI -> library (restore, evaluation, training, bench) -> factory -> io / degradation / hub -> models -> ops."""
    graph = import_graph()
    unplaced = sorted(m for m in graph if _layer(m) is None and m != "serpent_cli")
    assert unplaced == [], "every module belongs to a layer of LAYERS"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m))  # type: ignore[operator]
    assert upward == []


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_every_module_imports(module: str) -> None:
    """Packaging: every module of every subpackage imports (the wheel ships the whole ``serpent_cli`` tree)."""
    import importlib

    if module.endswith("__main__"):
        return
    assert importlib.import_module(module).__name__ == module
