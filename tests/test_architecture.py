"""The package's import graph: no circles, and the layers below the command line never import it.

Every `import` counts, inside functions too: a circle hidden in a function is still a circle a reader must untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import leukodx

SRC = Path(leukodx.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = ("leukodx",) + p.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _resolve(target: str, mods: dict[str, Path]) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                if t.startswith("leukodx"):
                    r = _resolve(t, mods)
                    if r and r != name:
                        graph[name].add(r)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module are the circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_graph_is_read():
    g = import_graph()
    assert "leukodx.inference.tiling" in g["leukodx.inference.pipeline"]
    assert "leukodx.evaluation.evaluate" in g["leukodx.training.segment"]  # an import inside a function


def test_a_circle_is_found():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert strongly_connected(import_graph()) == []


def test_lower_layers_never_import_the_command_line():
    bad = {m: sorted(t for t in deps if t.startswith("leukodx.cli"))
           for m, deps in import_graph().items()
           if not m.startswith("leukodx.cli") and m != "leukodx.__main__"}
    assert {m: d for m, d in bad.items() if d} == {}


def test_clinic_modules_import_no_torch_at_module_level():
    """The analysis and serving layers load without torch (the clinic install): torch is imported inside the
    functions that need it."""
    for name, path in _modules().items():
        if not name.startswith(("leukodx.inference.pipeline", "leukodx.inference.engines", "leukodx.web",
                                "leukodx.models.model_config", "leukodx.data.images")):
            continue
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("torch", "torchvision", "timm")], name
