"""The package's import structure: no import cycle between vitslim's modules (module-level
imports, those under ``if TYPE_CHECKING:`` left out), and the run path's layers point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import vitslim

ROOT = Path(vitslim.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """The vitslim modules ``path`` imports when it is imported (not inside functions, not for type checking)."""
    name, tree = module_name(path), ast.parse(path.read_text())
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, node, path.name == "__init__.py")
                found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names)

    visit(tree.body)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): module_imports(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            connect(node)
    return groups


def test_the_import_graph_is_read_and_has_no_cycle() -> None:
    graph = import_graph()
    assert "vitslim.pipeline.measure" in graph["vitslim.pipeline.run"]  # the reader sees real imports
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_the_run_path_layers_point_one_way() -> None:
    """Runtimes, evaluation and export never import the pipeline that drives them; the report
    never imports the pipeline or the export code (it renders report dicts)."""
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith(("vitslim.runtimes", "vitslim.evaluate", "vitslim.export", "vitslim.report")):
            assert not any(m.startswith("vitslim.pipeline") for m in imports), (module, imports)
        if module.startswith("vitslim.report"):
            assert not any(m.startswith(("vitslim.export", "vitslim.compress")) for m in imports), (module, imports)
