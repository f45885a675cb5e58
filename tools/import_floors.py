"""The package's import graph: floors, circles and upward imports.

    python tools/import_floors.py [PACKAGE_DIR]

A module's floor is 0 when it imports nothing of the package, else one above the highest floor
it imports (modules on a circle share a floor). An import is *upward* when the imported module
sits in a layer above the importer's, by the layer order in LAYERS (packages listed bottom to
top); a flat package has no layers, so it reports none. Every import counts, including ones
inside functions: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# Bottom to top: a module may import its own layer and the ones before it.
LAYERS = ("plumbing", "engines", "judging", "training", "stages")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # the longest module that the name is or lies in
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative enough for a package's size."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def analyse(root: Path) -> dict:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(root, p) for p in paths}
    graph = {module_name(root, p): imports_of(root, p, modules) for p in paths}
    # a package's __init__ importing its own modules is how packages re-export, not a circle
    for name, deps in graph.items():
        deps -= {d for d in deps if d.startswith(name + ".")}
    groups = strongly_connected(graph)
    group_of = {m: tuple(g) for g in groups for m in g}
    floor: dict[tuple, int] = {}
    for g in groups:  # Tarjan emits groups dependencies first
        deps = {group_of[d] for m in g for d in graph[m]} - {tuple(g)}
        floor[tuple(g)] = 1 + max((floor[d] for d in deps), default=-1)
    upward = sorted(
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if layer_of(m) is not None and layer_of(d) is not None and layer_of(d) > layer_of(m)
    )
    lines = {module_name(root, p): len(p.read_text().splitlines()) for p in paths}
    return {
        "modules": len(modules),
        "lines": sum(len(p.read_text().splitlines()) for p in paths),
        "floors": 1 + max(floor.values()),
        "circles": [g for g in groups if len(g) > 1],
        "upward": upward,
        "floor": {m: floor[group_of[m]] for m in sorted(modules)},
        "_lines": lines,
    }


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).parents[1] / "rlaif").resolve()
    result = analyse(root)
    print(f"{result['modules']} modules, {result['lines']} lines, {result['floors']} floors")
    print(f"circles: {len(result['circles'])}")
    for group in result["circles"]:
        print("  " + " -> ".join(group))
    print(f"upward imports: {len(result['upward'])}")
    for m, d in result["upward"]:
        print(f"  {m} -> {d}")
    return 1 if result["circles"] or result["upward"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
