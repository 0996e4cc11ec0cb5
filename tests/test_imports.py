"""The house's import rules, read from the source with `ast` (nothing is imported).

Every `import`/`from ... import` statement counts, wherever it stands: at module
level, inside a function or method, or under `if TYPE_CHECKING:`. A lazy import
inside a function still makes one module depend on another, so it cannot hide a
cycle. Relative imports are resolved against the importing module's package.

Two rules:
- no cycle between two or more project modules;
- no package imports from a package above it in the order
  policy -> store -> collect/serve -> train -> eval -> ttc. collect and serve share a
  level, so an import between them is not "upward"; any module cycle through them is
  still caught by the first rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("policy", "store", "collect", "serve", "train", "eval", "ttc")
LEVEL = {"policy": 0, "store": 1, "collect": 2, "serve": 2, "train": 3, "eval": 4, "ttc": 5}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            mods[_module_name(path)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The project module `name` refers to (longest existing prefix), or None."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def _targets(node: ast.Import | ast.ImportFrom, package: str, mods: dict[str, Path]) -> list[str]:
    """The dotted names one import statement names (relative ones resolved against `package`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # `from pkg import sub` may name a submodule: prefer it when it exists.
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]


def import_edges(mods: dict[str, Path]) -> list[tuple[str, str, int, str]]:
    """(importer, imported, line, 'module-level' | 'function-level') for each project import."""
    edges = set()
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        stack: list[tuple[ast.AST, bool]] = [(ast.parse(path.read_text(), filename=str(path)), False)]
        while stack:
            node, in_function = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    where = "function-level" if in_function else "module-level"
                    for t in _targets(child, package, mods):
                        dst = _resolve(t, mods)
                        if dst is not None and dst != mod:
                            edges.add((mod, dst, child.lineno, where))
                func = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                stack.append((child, in_function or func))
    return sorted(edges)


def _cycles(nodes: list[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of size > 1 (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def _graph(edges):
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in edges:
        graph.setdefault(src, set()).add(dst)
    return graph


def _describe(comp: list[str], edges) -> str:
    inside = set(comp)
    lines = [f"  {s} -> {d} (line {n}, {w})" for s, d, n, w in edges if s in inside and d in inside]
    return "cycle among " + ", ".join(comp) + ":\n" + "\n".join(sorted(set(lines)))


def upward_imports(edges) -> list[str]:
    bad = []
    for src, dst, line, where in edges:
        a, b = src.split(".")[0], dst.split(".")[0]
        if LEVEL[b] > LEVEL[a]:
            bad.append(f"{src} -> {dst} (line {line}, {where}): {a} may not import {b}")
    return sorted(set(bad))


@pytest.fixture(scope="module")
def edges():
    return import_edges(project_modules())


def test_no_import_cycle_between_project_modules(edges):
    mods = project_modules()
    comps = _cycles(sorted(mods), _graph(edges))
    assert not comps, "\n".join(_describe(c, edges) for c in comps)


def test_no_package_imports_a_package_above_it(edges):
    bad = upward_imports(edges)
    assert not bad, "\n".join(bad)


def test_the_walker_sees_function_level_and_relative_imports_and_finds_a_cycle(tmp_path):
    """The checker itself can fail: a planted two-module cycle (one side a lazy,
    relative, function-level import) and an upward import are both reported."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "__init__.py").write_text("")
    (tmp_path / "policy" / "a.py").write_text("from policy.b import f\n")
    (tmp_path / "policy" / "b.py").write_text("def f():\n    from .a import g\n    import store.x\n")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "__init__.py").write_text("")
    (tmp_path / "store" / "x.py").write_text("")
    mods = {}
    for pkg in ("policy", "store"):
        for path in sorted((tmp_path / pkg).rglob("*.py")):
            parts = list(path.relative_to(tmp_path).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    found = import_edges(mods)
    assert ("policy.b", "policy.a", 2, "function-level") in found
    assert ("policy.a", "policy.b", 1, "module-level") in found
    assert _cycles(sorted(mods), _graph(found)) == [["policy.a", "policy.b"]]
    assert upward_imports(found) == ["policy.b -> store.x (line 3, function-level): policy may not import store"]
