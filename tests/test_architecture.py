"""The package's import graph against the layer table of docs/architecture.md: no circles, no import from a lower
layer to a higher one, and no torch in the clinic runtime.

Every `import` counts, inside functions too: a circle hidden in a function is still a circle a reader must untangle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import leukodx

SRC = Path(leukodx.__file__).resolve().parent
DOC = SRC.parents[1] / "docs" / "architecture.md"
SHARED = ("leukodx", "leukodx.errors", "leukodx.io", "leukodx.cpus", "leukodx.assets")  # root modules, for all
CLINIC_FORBIDDEN = ("torch", "torchvision", "timm", "sklearn", "matplotlib", "safetensors", "onnx")


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


def _imports(name: str, path: Path) -> list[str]:
    """Every name a module imports (absolute; `from a import b` gives a.b), at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out += [f"{base}.{a.name}" for a in node.names] or [base]
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for t in _imports(name, path):
            if t.startswith("leukodx"):
                r = _resolve(t, mods)
                if r and r != name:
                    graph[name].add(r)
    return graph


def layer_table(text: str | None = None) -> dict[str, tuple[str, ...] | None]:
    """{layer: the packages or modules it may import (None: everything)} from the docs' "## Layers" block."""
    text = DOC.read_text() if text is None else text
    block = text.split("## Layers", 1)[1].split("```")[1]
    table: dict[str, tuple[str, ...] | None] = {}
    for line in block.splitlines():
        m = re.match(r"^(\w+)/\s.*\(([^()]*)\)\s*$", line)
        if m:
            allowed = m.group(2).strip()
            table[m.group(1)] = None if allowed == "everything" else tuple(
                a.strip() for a in allowed.split(",") if a.strip())
    return table


def layer_violations(graph: dict[str, set[str]], table: dict[str, tuple[str, ...] | None]) -> list[str]:
    def layer(mod: str) -> str | None:
        parts = mod.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in table else None

    bad = []
    for mod, deps in graph.items():
        own = layer(mod)
        if own is None or table[own] is None:
            continue
        allowed = tuple(f"leukodx.{a}" for a in table[own] or ())
        for d in sorted(deps):
            if d in SHARED or layer(d) == own:
                continue
            if not any(d == a or d.startswith(a + ".") for a in allowed):
                bad.append(f"{mod} imports {d}")
    return bad


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


def test_the_layer_table_is_read_from_the_docs():
    table = layer_table()
    assert table["cli"] is None and table["data"] == ()
    assert table["inference"] == ("models.model_config", "data.images")
    assert set(table) == {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file() and p.name != "assets"}


def test_a_layer_violation_is_found():
    table = {"inference": ("data.images",), "evaluation": ("inference",), "data": ()}
    graph = {"leukodx.inference.onnx": {"leukodx.evaluation.evaluate", "leukodx.data.images", "leukodx.errors"},
             "leukodx.evaluation.evaluate": {"leukodx.inference.pipeline"},
             "leukodx.data.layout": {"leukodx.data.images"}}
    assert layer_violations(graph, table) == ["leukodx.inference.onnx imports leukodx.evaluation.evaluate"]


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert layer_violations(import_graph(), layer_table()) == []


def test_the_clinic_runtime_imports_no_training_library_anywhere():
    """inference/ is the clinic runtime: numpy, scipy, Pillow and ONNX Runtime; no torch, not even in a function."""
    bad = {}
    for name, path in _modules().items():
        if name.startswith(("leukodx.inference", "leukodx.web")) or name in (
                "leukodx.models.model_config", "leukodx.data.images"):
            hits = [t for t in _imports(name, path) if t.split(".")[0] in CLINIC_FORBIDDEN]
            if hits:
                bad[name] = hits
    assert bad == {}


def test_lower_layers_never_import_the_command_line():
    bad = {m: sorted(t for t in deps if t.startswith("leukodx.cli"))
           for m, deps in import_graph().items()
           if not m.startswith("leukodx.cli") and m != "leukodx.__main__"}
    assert {m: d for m, d in bad.items() if d} == {}


def test_small_rooms_and_one_training_loop():
    """No module over 600 lines (migrations left out); one engine does the backward passes (with and without AMP)."""
    long = {p.relative_to(SRC).as_posix(): n for p in SRC.rglob("*.py") if "migrations" not in p.parts
            and (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
    backward = [p.name for p in (SRC / "training").rglob("*.py") for _ in range(p.read_text().count(".backward("))]
    assert backward == ["engine.py", "engine.py"]
