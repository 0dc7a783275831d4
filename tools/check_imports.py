"""The import rules of gconnect/, checked from the source (no import is run).

1. Imports go one way, down the layers below; a module imports only from its
   own layer or a lower one. Every import counts: top level, inside
   functions, and under ``TYPE_CHECKING``.
2. No import cycle, inside a layer either.
3. No private name crosses a module: ``from .x import _name`` is refused, and
   so is ``obj._name`` where ``_name`` is defined in other modules of the
   package but not in the one that uses it. Names are matched, not types: a
   module that defines a ``_name`` of its own may use another's by mistake,
   and ``getattr`` is not seen. Good enough to stop the habit; review the rest.

Usage: ``python tools/check_imports.py [ROOT]``; prints each violation and
exits 1 if there is any. ``tox -e lint`` runs it, and so does a unit test.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "gconnect"

#: Layers from the top; a module belongs to the first whose prefix it has.
#: The load-test tool and the test support stand beside the proxy: only the
#: operations layer may use them, and they use nothing of the data path.
LAYERS = (
    ("gconnect.__main__", 8),
    ("gconnect.ops", 7),
    ("gconnect.loadtest", 6),
    ("gconnect.testing", 6),
    ("gconnect.proxy", 5),
    ("gconnect.listener", 4),
    ("gconnect.tunnel.h2", 3.5),
    ("gconnect.tunnel", 3),
    ("gconnect.auth", 2),
    ("gconnect.state", 1.5),
    ("gconnect.config", 1),
    ("gconnect.errors", 1),
    ("gconnect", 0),
)
#: Modules of the side tools may import only these from the package.
SIDE_TOOLS = ("gconnect.loadtest", "gconnect.testing")


def layer(module: str) -> float:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise ValueError(module)


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def resolve(current: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = current.split(".")
    if path.name != "__init__.py":
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's imports within the package, and private names imported."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = resolve(mod, path, node)
                if target != PACKAGE and not target.startswith(PACKAGE + "."):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    dst = sub if sub in mods else target
                    if dst in mods and dst != mod:
                        edges[mod].add(dst)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and sub not in mods:
                        private.append(f"{path}:{node.lineno}: imports private {target}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != mod:
                        edges[mod].add(alias.name)
    return edges, private


def defined_privates(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, attributes it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_uses(mods: dict[str, Path]) -> list[str]:
    """``obj._name`` where only other modules of the package define ``_name``."""
    trees = {m: ast.parse(p.read_text()) for m, p in mods.items()}
    defined = {m: defined_privates(t) for m, t in trees.items()}
    everywhere = set().union(*defined.values())
    found = []
    for mod, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if node.attr in everywhere and node.attr not in defined[mod]:
                found.append(f"{mods[mod]}:{node.lineno}: uses {node.attr}, private to another module")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            strong(v)
    return found


def check(root: Path) -> list[str]:
    """Every violation of the rules above, one line each."""
    mods = modules(root)
    edges, problems = imports(mods)
    for mod, targets in sorted(edges.items()):
        for target in sorted(targets):
            side_tool = any(mod == t or mod.startswith(t + ".") for t in SIDE_TOOLS)
            if side_tool and layer(target) > 1 and layer(target) != layer(mod):
                problems.append(f"{mods[mod]}: {mod} (a side tool) imports {target}")
            elif layer(target) > layer(mod):
                problems.append(f"{mods[mod]}: {mod} imports {target}, a higher layer")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    problems += private_uses(mods)
    return problems


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    problems = check(root)
    for line in problems:
        print(line)
    print(f"{len(modules(root))} modules: {len(problems)} import rule violations", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
