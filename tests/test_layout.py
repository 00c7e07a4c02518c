"""The package layout's rules: no import cycles between enhancer's modules (imports inside functions count too), and
each package imports only what docs/architecture.md says it may."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "enhancer"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (never executed)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        found.append(node)
        todo += ast.iter_child_nodes(node)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the enhancer modules it imports (``from pkg import name`` counts as pkg.name when that is a
    module, else as pkg)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


LEAVES = {
    "enhancer",
    "specs",
    "settings",
    "preprocessing",
    "hashing",
    "provenance",
    "atomic",
    "stopping",
}  # usable from all
WORKING = {"data", "models", "explain", "store"}
MAY_IMPORT = {  # docs/architecture.md, "Packages"
    "cli": {"run", "enhance", "cycle", "train", "report", "audit"} | WORKING | LEAVES,
    "run": {"enhance", "cycle", "train", "store"} | LEAVES,  # store: the file names of store/layout.py
    "enhance": WORKING | LEAVES,
    "cycle": {"enhance", "train", "audit"} | WORKING | LEAVES,
    "audit": WORKING | LEAVES,
    "train": {"data", "models", "store"} | LEAVES,
    "models": {"data"} | LEAVES,
    "data": {"preprocessing", "hashing", "atomic"},
    "explain": {"settings"},
    "store": {"hashing", "atomic"},
    "report": {"store", "explain"} | LEAVES,
    **{leaf: LEAVES for leaf in LEAVES},
}


def package_of(module: str) -> str:
    """``enhancer.store.writer`` -> ``store``; ``enhancer.specs`` -> ``specs``; ``enhancer`` -> ``enhancer``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    assert "enhancer.enhance" in graph["enhancer.cli.enhance_commands"]  # imported inside the command body
    assert "enhancer.explain.cam" in graph["enhancer.enhance.batch_outputs"]  # `from enhancer.explain import cam`


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_detection_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_import_only_what_the_architecture_allows() -> None:
    graph = import_graph()
    assert {package_of(m) for m in graph} == set(MAY_IMPORT), "a new package: add it to docs/architecture.md and here"
    breaches = [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if package_of(target) != package_of(module) and package_of(target) not in MAY_IMPORT[package_of(module)]
    ]
    assert breaches == []


def test_no_public_name_of_the_store_is_a_module_name() -> None:
    """``enhancer.store`` loads its names lazily; a submodule named like a public name (``verify``) would replace
    that name with the module as soon as the submodule is imported."""
    import enhancer.store

    modules = {p.stem for p in (PACKAGE / "store").glob("*.py")}
    assert set(enhancer.store.__all__) & modules == set()
