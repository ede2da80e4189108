"""The source layout keeps its promises: no import circle, no module over 400 lines.

Every ``import`` counts, those inside functions and under ``TYPE_CHECKING`` too: a
deferred import hides a circle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for base, top in ((ROOT, "featkit"), (ROOT / "protocols", "featkit_protocols")):
        for path in (base / top).rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        targets |= {name for name in names if name in known}
    return targets


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of ``graph`` (a list of its nodes), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_cycle_finder_finds_a_planted_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, modules) if t != name} for name, path in modules.items()
    }
    # A package's __init__ may gather its own submodules (featkit.backbones does).
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(f"{t}.")}
    assert _cycle(graph) == []


def test_packages_stack_without_a_circle() -> None:
    modules = _modules()

    def unit(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "featkit" and len(parts) > 1 else parts[0]

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        mine = unit(name)
        theirs = {unit(t) for t in _imports(path, modules)} - {mine, "featkit"}
        graph.setdefault(mine, set()).update(theirs)
        for other in theirs:
            graph.setdefault(other, set())
    assert _cycle(graph) == []


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
