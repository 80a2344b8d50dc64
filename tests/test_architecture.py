"""The package's shape: no import cycles (counting imports inside functions), no oversized module."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nonuniform"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nonuniform."):
            out.add(node.module.split(".")[1])
    return out


def test_no_import_cycles():
    graph = {p.stem: _imports(p) for p in PKG.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*path, m, n])
            if n in graph and state.get(n) is None:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m, [])


def test_modules_stay_small():
    """One idea per module: none over 400 lines (library and command line)."""
    big = {
        str(p.relative_to(PKG.parent)): n
        for folder in (PKG, PKG.parent / "cli")
        for p in folder.glob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not big, f"modules over 400 lines: {big}"
