"""The package's shape: sub-packages with no import cycles between modules or between packages,
no oversized module, the old flat paths deprecated but working, nothing changed on import."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from nonuniform._legacy import MOVED

PKG = Path(__file__).resolve().parents[1] / "nonuniform"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package imported by ``path`` (inside functions too), as dotted names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            out.add(target)
            if not node.module:
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nonuniform."):
            out.add(node.module)
    modules = {_module_name(p) for p in PKG.rglob("*.py")}
    return {m for m in out if m in modules and m != name}


GRAPH = {_module_name(p): _imports(p) for p in PKG.rglob("*.py") if p.name != "__init__.py"}


def _acyclic(graph: dict[str, set[str]]) -> None:
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


def test_no_import_cycles_between_modules():
    _acyclic(GRAPH)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "<top>"


def test_no_import_cycles_between_subpackages():
    """Sub-packages form layers (docs/ARCHITECTURE.md): ir and relax under engine, and so on."""
    graph: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        if _package(m) == "<top>":
            continue  # the public modules (settings-free helpers, _legacy) sit beside the packages
        graph.setdefault(_package(m), set()).update(
            _package(d) for d in deps if _package(d) not in ("<top>", _package(m))
        )
    _acyclic(graph)


def test_every_module_lives_in_a_subpackage():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "_legacy.py", "modules.py"], top


def test_modules_stay_small():
    """One idea per module: none over 400 lines (library and command line)."""
    big = {
        str(p.relative_to(PKG.parent)): n
        for p in [*PKG.rglob("*.py"), *(PKG.parent / "cli").glob("*.py")]
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not big, f"modules over 400 lines: {big}"


def test_import_leaves_torch_threads_alone():
    code = (
        "import torch; torch.set_num_threads(2); n = torch.get_num_threads(); import nonuniform; "
        "assert torch.get_num_threads() == n, torch.get_num_threads()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_paths_work_and_warn(old):
    """``nonuniform.<old>`` still gives every public name it had, with one DeprecationWarning."""
    legacy = importlib.import_module(f"nonuniform.{old}")
    new = importlib.import_module(f"nonuniform.{MOVED[old][0]}")
    names = getattr(new, "__all__", None) or [n for n in vars(new) if not n.startswith("_")]
    legacy._warned = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in names:
            assert getattr(legacy, n) is getattr(new, n), f"nonuniform.{old}.{n}"
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) == 1


def test_old_module_names_that_are_packages_keep_their_exports():
    from nonuniform.attacks import falsify_boxes, pgd_minimize  # noqa: F401
    from nonuniform.recurrent import RecurrentBoundedModel, SequenceClassifier  # noqa: F401
    from nonuniform.report import write_report  # noqa: F401
    from nonuniform.verify import VerifyReport, verify_boxes  # noqa: F401
