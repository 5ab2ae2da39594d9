"""The shape of the library: no import circle among mimlib's modules.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` of a mimlib
module counts, at module level or inside a function, a class or a ``try`` (a function-level import
only defers a circle, it does not remove it). The one exception is the block under
``if __name__ == "__main__":``: it runs only when the file is the program (``python -m mimlib.x``,
module ``__main__``), never when ``mimlib.x`` is imported, so it is no edge out of ``mimlib.x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mimlib"


def _module_name(path: Path) -> str:
    parts = ["mimlib", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.AST) -> bool:
    t = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__" and len(t.comparators) == 1
            and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value == "__main__")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` outside ``if __name__ == "__main__":`` blocks."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if _is_main_guard(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    """mimlib module -> the mimlib modules it imports (anywhere but its ``__main__`` block)."""
    files = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package.split(".")
                if node.level:
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # "from pkg import sub" imports the submodule pkg.sub; "from mod import name" imports mod
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            for t in targets:
                while t and t not in files:   # "import mimlib.nets.hvae" names the deepest module
                    t = t.rpartition(".")[0]
                if t:
                    edges.add(t)   # t == name: a module importing itself, a circle of one
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, and modules importing themselves
    (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
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
                    if len(comp) > 1 or v in graph[v]:
                        out.append(sorted(comp))
    return out


def test_the_graph_sees_every_kind_of_import():
    """The reader finds module-level, relative, package and function-level imports, and skips the
    ``__main__`` block (checked on modules whose imports are known)."""
    g = import_graph()
    assert {"mimlib.image_config", "mimlib.train", "mimlib.atomic"} <= g["mimlib.image_study"]
    assert "mimlib.nets.hvae" in g["mimlib.nets.pixelhvae"]          # from .hvae import ...
    assert "mimlib.precision" in g["mimlib.nets.hvae"]               # from ..precision import ...
    assert "mimlib.mixture2d" in g["mimlib.sweep"]                   # inside a function
    assert "mimlib.image_cli" not in g["mimlib.image_study"]         # only its __main__ block imports it
    assert "mimlib.image_study" in g["mimlib.image_cli"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": set()}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, "import circles among mimlib's modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_presets_do_not_import_the_study():
    """The named presets need only the configs (not the study that trains them)."""
    g = import_graph()
    assert "mimlib.image_study" not in g["mimlib.presets"]
