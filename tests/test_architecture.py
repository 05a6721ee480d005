"""The import rules of docs/ARCHITECTURE.md, checked by walking every import statement.

Every module of the `longtail` package belongs to a layer; a module may import only from its
own layer or the layers below, and no import cycle may exist between modules. All `import` and
`from ... import` nodes count, including those inside functions and `TYPE_CHECKING` blocks
(relative imports are resolved). Importing `a.b.c` also runs the `__init__` of the packages
`a.b` that the importer is not itself inside, so those count as edges too. Imports made by
name at run time count as well (`importlib.import_module(...)`, `import_module(...)`,
`__import__(...)`): a string literal naming a longtail module, given directly or through a
module-level tuple / list of literals, is an edge like an `import` statement, so a run-time
cycle or an upward import through `importlib` fails the same tests; a longtail module named
by a computed string (an f-string, a concatenation) cannot be checked and is an error of its own.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = "longtail"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top. A module's layer is that of the longest prefix naming it or a package above it;
# "longtail" itself (the package __init__) is matched only exactly.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("longtail.errors", "longtail.registry", "longtail.io", "longtail.config",
              "longtail.device", "longtail.runs", "longtail.maths", "longtail.progress")),
    ("data", ("longtail.data",)),
    ("eval", ("longtail.eval",)),
    ("models", ("longtail.models",)),
    ("methods", ("longtail.methods",)),
    ("soups", ("longtail.soups",)),
    ("app", ("longtail.commands", "longtail.cli", "longtail.__main__", "longtail")),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package."""
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def layer_of(module: str) -> str | None:
    """The layer of the most specific prefix naming `module`, or None if no prefix does."""
    best, best_len = None, -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            exact_only = prefix == PACKAGE
            hit = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    return best


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """Absolute module named by a (possibly relative) `from X import ...`."""
    if not node.level:
        return node.module or ""
    package = importer if is_package(importer) else importer.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(importer: str, node: ast.AST) -> list[str]:
    """The longtail module names one import node loads (the named modules only, not parents);
    a name that is no module of the package is returned as is (see `unresolved_imports`)."""
    known = modules()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(importer, node)
        names = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            names.append(sub if sub in known else base)
    elif _is_dynamic_import(node):
        names = _literal_names(node.args[0], _module_literals(importer)) if node.args else []
    else:
        return []
    return [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]


DYNAMIC = ("import_module", "__import__")  # importlib.import_module / import_module / __import__


def _is_dynamic_import(node: ast.AST) -> bool:
    """A call of importlib.import_module, a bare import_module or __import__."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in DYNAMIC


@cache
def _module_literals(module: str) -> dict[str, list[str]]:
    """Names bound at module level (or anywhere, by a plain assignment) to a tuple / list of string
    literals: `MODULES = ("longtail.a", "longtail.b")`, so `for m in MODULES: import_module(m)`
    (or a loop variable over such a tuple) resolves to those modules."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Tuple, ast.List)):
            values = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            for target in node.targets:
                if isinstance(target, ast.Name) and values:
                    found[target.id] = values
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            source = node.iter
            if isinstance(source, ast.Name) and source.id in found:
                found[node.target.id] = found[source.id]
            elif isinstance(source, (ast.Tuple, ast.List)):
                found[node.target.id] = [e.value for e in source.elts
                                         if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return found


def _literal_names(arg: ast.AST, literals: dict[str, list[str]]) -> list[str]:
    """The module names a dynamic import's argument can take: a literal, a name bound to a tuple
    of literals, or, for a computed string that starts like a longtail module, a marker that
    `dynamic_imports_unresolved` reports."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.Name):
        return list(literals.get(arg.id, []))
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)
        return [f"{head}<computed>"] if head.startswith(PACKAGE) else []
    if isinstance(arg, ast.BinOp) and isinstance(arg.left, ast.Constant) and isinstance(arg.left.value, str):
        return [f"{arg.left.value}<computed>"] if arg.left.value.startswith(PACKAGE) else []
    return []


@cache
def import_graph() -> dict[str, dict[str, int]]:
    """importer -> {imported module: line of the first import}, parent __init__s included."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules().items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own = set(_ancestors(module)) | {module}
        for node in ast.walk(tree):
            for target in _targets(module, node):
                if target not in modules():
                    continue  # reported by test_every_import_resolves
                implied = [p for p in _ancestors(target) if p != PACKAGE and p not in own]
                for name in [*implied, target]:
                    if name != module:
                        edges.setdefault(name, node.lineno)
        graph[module] = edges
    return graph


def _where(importer: str, line: int) -> str:
    return f"{modules()[importer].relative_to(SOURCE.parent).as_posix()}:{line}"


def unresolved_imports() -> list[str]:
    """'file:line  importer -> name' for every import of a longtail module that does not exist."""
    bad = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            bad += [f"{_where(module, node.lineno)}  {module} -> {name}"
                    for name in _targets(module, node) if name not in modules()]
    return sorted(bad)


def upward_imports() -> list[str]:
    """'file:line  importer (layer) -> imported (higher layer)' for every rule-breaking edge."""
    bad = []
    for importer, edges in import_graph().items():
        low = layer_of(importer)
        for target, line in edges.items():
            high = layer_of(target)
            if low and high and RANK[high] > RANK[low]:
                bad.append(f"{_where(importer, line)}  {importer} ({low}) -> {target} ({high})")
    return sorted(bad)


def import_cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted names."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth <= number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sorted(c) for c in components)


def _one_cycle(component: list[str]) -> list[str]:
    """A concrete cycle start -> ... -> start inside a strongly connected component (BFS)."""
    graph, members, start = import_graph(), set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return component  # unreachable for a real component


def _format_cycle(component: list[str]) -> str:
    """The component's modules, one shortest cycle through its first module, and every edge
    inside it (cutting enough of those edges breaks the cycle)."""
    graph, members = import_graph(), set(component)
    cycle = _one_cycle(component)
    inner = [f"    {_where(a, line)}  {a} -> {b}" for a in component
             for b, line in sorted(graph[a].items()) if b in members]
    return (f"cycle among {len(component)} modules: {', '.join(component)}\n"
            f"  e.g. {' -> '.join(cycle)}\n  edges inside it:\n" + "\n".join(inner))


# ---------------------------------------------------------------- the tests
def test_every_module_has_a_layer():
    unmapped = sorted(m for m in modules() if layer_of(m) is None)
    assert not unmapped, "modules in no layer (add them to LAYERS): " + ", ".join(unmapped)


@pytest.mark.parametrize("layer,prefix", [(name, p) for name, ps in LAYERS for p in ps])
def test_layer_prefix_exists(layer, prefix):
    assert prefix in modules(), f"layer {layer}: no module or package named {prefix}"


def test_every_import_resolves():
    """Imports inside functions fail only when called: catch stale paths after a move."""
    bad = unresolved_imports()
    assert not bad, f"{len(bad)} import(s) of a missing longtail module:\n" + "\n".join(bad)


def test_no_import_from_a_higher_layer():
    bad = upward_imports()
    assert not bad, f"{len(bad)} import(s) from a higher layer:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(map(_format_cycle, cycles))


# ---------------------------------------------------------------- the checker itself
def test_checker_sees_imports_inside_functions_and_relative_ones():
    tree = ast.parse("def f():\n    from ..data import presets\n    import longtail.eval.metrics\n")
    found = [t for node in ast.walk(tree) for t in _targets("longtail.methods.heads", node)]
    assert found == ["longtail.data.presets", "longtail.eval.metrics"]
    other = ast.parse("import numpy\nfrom longtail.nowhere import x\nfrom . import heads\n")
    found = [t for node in ast.walk(other) for t in _targets("longtail.methods.losses", node)]
    assert found == ["longtail.nowhere", "longtail.methods.heads"]  # missing names kept, to report
    assert layer_of("longtail.maths.vmf") == "core" and layer_of("longtail") == "app"
    assert layer_of("longtail.commands.fit") == "app" and layer_of("longtail.data.presets") == "data"


def test_checker_counts_dynamic_imports_as_edges(monkeypatch):
    """importlib.import_module / __import__ with a literal, a tuple of literals (directly or as
    a loop variable) are edges; a computed longtail name is kept as an unresolvable target."""
    source = ("import importlib\nKINDS = ('longtail.soups.merge', 'numpy')\n"
              "def f(x):\n    importlib.import_module('longtail.eval.report')\n"
              "    for m in KINDS:\n        importlib.import_module(m)\n"
              "    __import__('longtail.data.presets')\n"
              "    importlib.import_module(f'longtail.commands.{x}')\n"
              "    importlib.import_module(x)\n")
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    _module_literals.cache_clear()
    try:
        tree = ast.parse(source)
        found = [t for node in ast.walk(tree) for t in _targets("longtail.runs", node)]
    finally:
        _module_literals.cache_clear()
    assert sorted(found) == ["longtail.commands.<computed>", "longtail.data.presets",
                             "longtail.eval.report", "longtail.soups.merge"]
