"""The package's import graph points one way: no module imports, directly or through others, a module that imports
it back, counting the imports inside functions too (a lazy import is still a dependency, and a circle of them is
what lazy imports are usually there to hide). The model zoo (``models/``) sits below the training code
(``training/``) and never imports from it.

The graph is read from the source with :mod:`ast`, not by importing, so that it is the same whether or not the
compiled extension or Triton are present.
"""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deeprnn_cuda"


def _module_names(package: Path) -> Dict[str, Path]:
    """Every Python module of ``package``, by dotted name (a package by its own name, not ``__init__``)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _top_level_names(path: Path) -> Set[str]:
    """The names a module binds when it runs: its definitions, assignments and imports outside functions and
    classes (inside ``if`` and ``try`` too)."""
    names: Set[str] = set()
    pending = list(ast.parse(path.read_text(), str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []))
    return names


def import_graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    """``module -> the modules of the package it imports``, every ``import`` and ``from ... import`` statement
    of the module counted, at any depth of its code."""
    modules = _module_names(package)
    graph = {}
    for name, path in modules.items():
        # the package a relative import is relative to
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                for alias in node.names:
                    # as Python resolves it: ``from pkg import sub`` imports the submodule ``pkg.sub`` (also a
                    # compiled one such as ``_C``, not in the graph); only a name that ``pkg`` binds comes from pkg
                    target = f"{source}.{alias.name}"
                    is_package = source in modules and modules[source].name == "__init__.py"
                    if target in modules or (is_package and alias.name not in _top_level_names(modules[source])):
                        targets.add(target)
                    else:
                        targets.add(source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One circle of ``graph`` as ``[a, b, ..., a]``, or None when it has none (depth-first search)."""
    done: Set[str] = set()
    path: List[str] = []
    on_path: Set[str] = set()

    def visit(node: str) -> Optional[List[str]]:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_the_graph_reader_sees_relative_lazy_and_package_imports(tmp_path):
    # a package built for the purpose: a function-level import, ``from . import`` of a submodule, of a compiled
    # module and of a name the package binds, and an absolute import
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\nVERSION = 1\n")
    (pkg / "a.py").write_text("from .sub.b import thing\nfrom . import _ext\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "def thing():\n    from ..a import anything\n    import pkg.sub\n    from .. import VERSION\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(),
                     "pkg.sub.b": {"pkg", "pkg.a", "pkg.sub"}}
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg.sub.b", "pkg"]
    assert find_cycle({"x": {"y"}, "y": set(), "z": {"x", "y"}}) is None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"deeprnn_cuda.backends", "deeprnn_cuda.cbm", "deeprnn_cuda.training.loop"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("low, high", [("deeprnn_cuda.models", "deeprnn_cuda.training"),
                                       ("deeprnn_cuda.data", "deeprnn_cuda.training"),
                                       ("deeprnn_cuda.data", "deeprnn_cuda.models")])
def test_lower_layers_import_nothing_from_higher_ones(low, high):
    graph = import_graph()
    upward = {(m, t) for m, targets in graph.items() if m == low or m.startswith(low + ".")
              for t in targets if t == high or t.startswith(high + ".")}
    assert not upward
