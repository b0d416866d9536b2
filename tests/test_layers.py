"""Imports inside ``bilevel/`` point one way: no cycle, no import of a higher layer.

The import statements of every module (top level and inside functions alike) are read with
:mod:`ast`, without importing anything. ``LAYERS`` below is the layer table, lowest first;
a module belongs to the entry that is the longest dotted prefix of its name (an entry covers
the module of that name and all its submodules; the package root ``bilevel`` covers only
itself). A module may import its own layer or any lower one.
"""

from __future__ import annotations

import ast
import pathlib

#: Layers, low to high. Adjust module names here when modules move or are added.
LAYERS: list[tuple[str, ...]] = [
    ("bilevel.backend", "bilevel.validation", "bilevel.registry", "bilevel.tree",
     "bilevel.batch", "bilevel.allocator"),
    ("bilevel.numpy",),
    ("bilevel.nonfinite", "bilevel.oracles", "bilevel.problem", "bilevel.oracle_checks",
     "bilevel.conditions", "bilevel.input_checks"),
    ("bilevel.dynamics", "bilevel.linalg", "bilevel.ode", "bilevel.checkpoint",
     "bilevel.recompute", "bilevel.stability"),
    ("bilevel.methods",),
    ("bilevel.api", "bilevel"),
    ("bilevel.outer",),
    ("bilevel.testing", "bilevel.hpo", "bilevel.meta", "bilevel.optim",
     "bilevel.stochastic", "bilevel.sklearn"),
    ("bilevel.bench", "bilevel.demo", "bilevel.cli", "bilevel.__main__"),
]

ROOT = pathlib.Path(__file__).resolve().parents[1] / "bilevel"


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("bilevel",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(module: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module ``from <node.module> import ...`` reads."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _targets(module: str, path: pathlib.Path) -> set[str]:
    """Modules of ``bilevel`` that ``module`` imports (its own ancestor packages excluded)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            candidates = [[f"{base}.{a.name}", base] for a in node.names]
        else:
            continue
        for names in candidates:
            hit = next((c for c in names if c in MODULES), None)
            if hit is not None and not module.startswith(hit + "."):
                out.add(hit)
    out.discard(module)
    return out


GRAPH = {m: _targets(m, p) for m, p in MODULES.items()}


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` of the longest entry that is a dotted prefix of ``module``."""
    best, best_len = None, -1
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != "bilevel" and module.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = i, len(entry)
    return best


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _upward() -> list[str]:
    bad = []
    for module, targets in sorted(GRAPH.items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{module} (layer {here}) imports {target} (layer {there})")
    return bad


def test_the_parser_sees_the_package():
    assert {"bilevel", "bilevel.api", "bilevel.numpy", "bilevel.methods"} <= set(MODULES)
    assert "bilevel.api" in GRAPH["bilevel"]
    assert "bilevel.numpy" in GRAPH["bilevel.hpo.problems"] or "bilevel.numpy" in set().union(
        *(GRAPH[m] for m in MODULES if m.startswith("bilevel.hpo"))
    )


def test_layer_table_matches_by_longest_prefix():
    assert layer_of("bilevel") == layer_of("bilevel.api")
    assert layer_of("bilevel.linalg.cg") == layer_of("bilevel.linalg")
    assert layer_of("bilevel.methods.reverse") > layer_of("bilevel.dynamics")
    assert layer_of("bilevel.somewhere_new") is None


def test_tarjan_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, (
        f"modules not in the layer table of {__file__}: {missing}. Place each in LAYERS "
        f"(lowest layer first; a module may import only its own layer and lower ones)."
    )


def test_no_import_cycle():
    cycles = strongly_connected(GRAPH)
    assert not cycles, "import cycles in bilevel/: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_upward_import():
    bad = _upward()
    assert not bad, "imports of a higher layer (see LAYERS in this file):\n" + "\n".join(bad)
