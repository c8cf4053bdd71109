"""hetvc's modules import one another without a cycle.

The graph: one node per module under src/hetvc (a package is its ``__init__``), one edge per
import that runs when the module is imported — statements at module level, in class bodies
and in ``if``/``try``/``with`` blocks there, but not in functions (a function-level import,
e.g. of matplotlib or of a sibling needed only by one command, runs only when called) and
not under ``if TYPE_CHECKING:``.  ``from P import name`` is an edge to the submodule
``P.name`` where there is one, else to ``P``; relative imports are resolved.  The implicit
import of a parent package (importing ``hetvc.a.b`` first runs ``hetvc/a/__init__.py``) is
not an edge: a package's ``__init__`` may gather its submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hetvc

ROOT = Path(hetvc.__file__).resolve().parent
PACKAGE = "hetvc"

# Cycles that exist today in modules other than hetvc.study, each as the sorted list of its
# modules (a strongly connected component).  Listed so that this test fails on any new cycle;
# remove an entry once its cycle is broken.
KNOWN_CYCLES: list[list[str]] = []


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body):
    """The statements of ``body`` that run at import time (not in functions, not TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_statements(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_statements(node.body)


def imports_of(name: str, path: Path, modules: dict[str, Path], lazy: bool = False) -> set[str]:
    """The hetvc modules that module ``name`` (file ``path``) imports at import time, and with
    ``lazy`` also those its functions import."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = set()
    for node in ast.walk(tree) if lazy else _import_time_statements(tree.body):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    out.discard(name)
    return {m for m in out if m in modules}


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules, lazy) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_resolves_imports_and_finds_cycles():
    graph = import_graph()
    assert "hetvc.errors" in graph["hetvc.study.scenario"]  # from ..errors import
    assert "hetvc.study.scenario" in graph["hetvc.study"]  # a package's own: from .scenario import
    assert "hetvc.engines.base" in graph["hetvc.engines"]
    assert "hetvc.study" not in graph["hetvc.cli.study"]  # imported in a function only
    assert "hetvc.study" in import_graph(lazy=True)["hetvc.cli.study"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles among hetvc's modules: " + "; ".join(" ↔ ".join(c) for c in new)


def test_known_cycles_still_exist():
    found = cycles(import_graph())
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"these cycles are gone; remove them from KNOWN_CYCLES: {gone}"


def test_figures_never_import_the_runner():
    graph = import_graph(lazy=True)  # not even from inside a function
    seen, todo = set(), ["hetvc.study.figures"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert "hetvc.study.runner" not in seen
    assert "hetvc.study" not in seen  # the package __init__ gathers the runner


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def test_no_private_name_is_imported_across_a_package_boundary():
    """``from hetvc.x import _name`` only within one package (hetvc, hetvc.kinship, …): a
    private name is its package's own business.  Every import counts, function-level too."""
    names = module_names()
    crossings = []
    for module, path in names.items():
        is_package = path.name == "__init__.py"
        here = _package_of(module, is_package)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(PACKAGE):
                continue
            there = _package_of(target, target in names and names[target].name == "__init__.py")
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and there != here:
                    crossings.append(f"{module} imports {alias.name} from {target}")
    assert not crossings, crossings


def test_tests_import_no_private_name_of_hetvc():
    """The tests use hetvc as a user would: ``from hetvc… import _name`` nowhere under tests/."""
    found = []
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                found += [f"{path.name}: {alias.name} from {node.module}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, found
