"""No import circles inside pyqwen: read every module's imports (top level and inside functions, from the
source, without importing anything) and check the module graph has no cycle.

Importing pyqwen.a.b runs pyqwen/a/__init__.py too, so that is an edge to pyqwen.a as well, except
when pyqwen.a is a package the importer is inside of (its own package always runs first: not an edge
anyone chose). `importlib.import_module("pyqwen....")` with a literal name counts as an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyqwen

PKG = Path(pyqwen.__file__).resolve().parent


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(pkg_dir: Path = PKG) -> dict[str, set[str]]:
    files = {_module_name(p, pkg_dir.parent): p for p in pkg_dir.rglob("*.py")}
    packages = {_module_name(p, pkg_dir.parent) for p in pkg_dir.rglob("__init__.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                root = ".".join(base + ([node.module] if node.module else []))
                targets = [root] + [f"{root}.{a.name}" for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                targets = [node.args[0].value]
            for t in targets:
                # the deepest pyqwen module the name refers to (`from . import x` names module x) ...
                while t and t not in files:
                    t = t.rpartition(".")[0]
                # ... and the packages above it, whose __init__ runs first
                while t:
                    if t != mod and not (t in packages and (mod + ".").startswith(t + ".")):
                        graph[mod].add(t)
                    t = t.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        color[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if color.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in color:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(graph):
        if m not in color:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "pyqwen.model" in graph and "pyqwen.generation" in graph["pyqwen.model"]  # the reader sees edges
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_runtime_does_not_import_the_converter():
    graph = import_graph()
    assert not any(t.startswith("pyqwen.convert") for t in graph["pyqwen.tokenizer"])
    assert "pyqwen.server.cli" not in graph["pyqwen.cli"] or "pyqwen.cli" not in graph["pyqwen.server.cli"]


def test_the_checker_sees_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "c.py").write_text("from .a import f\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("import importlib\nimportlib.import_module('pkg.c')\n")
    (pkg / "sub" / "d.py").write_text("from . import e\n")
    (pkg / "sub" / "e.py").write_text("")
    graph = import_graph(pkg)
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg.c"} and graph["pkg.sub.d"] == {"pkg.sub.e"}
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
