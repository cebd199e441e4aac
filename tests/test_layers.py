"""The package's import structure: no import cycle anywhere (function-level imports included), and every
import goes from a higher layer to a lower one (never sideways between two packages of one layer)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import ghanet_pipeline

PKG_DIR = Path(ghanet_pipeline.__file__).parent
#: layer of each package (and of the top-level modules): imports only go to a lower layer or within a package
LAYERS = {"": -1, "core": 0, "env": 1, "protocols": 1, "wsi": 2, "features": 3, "genomics": 3, "models": 3,
          "evaluation": 4, "training": 5, "inference": 6, "report": 7, "demo": 8, "testing": 9, "cli": 10,
          "__main__": 11}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG_DIR.rglob("*.py"):
        parts = list(p.relative_to(PKG_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the ghanet modules it imports anywhere in its body (names relative to the package)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".") if pkg else []
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("ghanet_pipeline"):
                    target = node.module.removeprefix("ghanet_pipeline").lstrip(".")
                else:
                    continue
                targets = [target] + [f"{target}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("ghanet_pipeline").lstrip(".") for a in node.names
                           if a.name.startswith("ghanet_pipeline")]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    return module.split(".")[0] if module else ""


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_imports_go_down_the_layers():
    bad = []
    for mod, targets in import_graph().items():
        src = _package(mod)
        assert src in LAYERS, f"package {src!r} has no layer in tests/test_layers.py: add it to LAYERS"
        for t in targets:
            dst = _package(t)
            if dst != src and not LAYERS[dst] < LAYERS[src]:
                bad.append(f"{mod} -> {t}")
    assert bad == [], "imports that go up or sideways: " + ", ".join(sorted(bad))


def test_the_checks_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


#: longest library function (lines, decorators excluded) and module a reader should have to hold in their head
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def _long_functions(text: str, limit: int) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
            found.append((node.name, node.end_lineno - node.lineno + 1))
    return found


def test_functions_and_modules_stay_short():
    long_functions, long_modules = [], []
    for name, path in _modules().items():
        text = path.read_text()
        long_functions += [f"{name}.{fn} ({n} lines)" for fn, n in _long_functions(text, MAX_FUNCTION_LINES)]
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
    assert long_functions == [], f"split these into named steps: {long_functions}"
    assert long_modules == [], f"split these modules by concept: {long_modules}"


def test_the_size_check_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    assert _long_functions(f"def f():\n{body}\n", MAX_FUNCTION_LINES) == [("f", 71)]
