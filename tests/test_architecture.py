"""The package's shape, checked from its source: layers imported only downwards, no import
circle, no function over 80 lines, no module over 500 lines.

``LAYERS`` below is the one table of layers (``docs/architecture.md`` shows it as a picture,
generated from the code by this file: ``python tests/test_architecture.py --write``).

How imports are read: every ``import`` and ``from ... import`` anywhere in a module (at module
level, inside functions and methods, under ``if TYPE_CHECKING``), relative or absolute, that
names a module of the package. ``from .pkg import name`` counts as an import of the submodule
``pkg.name`` when one exists, else of ``pkg`` itself (its ``__init__``).

Nodes: every module is its own node for circles (so a circle between two modules of one
package counts too); a module's layer is that of its top-level name (``training.engine`` is in
``training``'s layer). In the picture each package (``training/``, ``distributed/``,
``_widgets/``) is drawn as one box.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "napari_mitoseg"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: Layers, bottom (0) to top. A module may import modules of its own layer or of lower layers,
#: never of a higher one. Keys are top-level names under the package ("" is the package's
#: ``__init__``); a package (``training``, ``distributed``, ``_widgets``) covers its modules.
LAYERS: dict[str, int] = {
    # 0: files, metadata, numbers: no torch, no model
    "": 0, "_paths": 0, "_atomic": 0, "io": 0, "metadata": 0, "metrics": 0, "ngff": 0,
    "synthetic": 0, "_generators": 0, "_progress": 0,
    # 1: the network and what works on one volume's objects
    "model": 1, "inference": 1, "morphology": 1, "proofread": 1, "tiling": 1, "neighbours": 1, "ortho": 1,
    "uncertainty": 1, "labelling": 1, "normalisation": 1, "precision": 1, "stack_setup": 1,
    "model_spec": 1, "networks": 1, "regnet_unet": 1, "bioimageio_import": 1, "bioimageio_export": 1,
    # 2: learning, and the pipeline's last step
    "training": 2, "postprocess": 2, "pipeline": 2,
    # 3: the one public API the front ends share
    "api": 3, "finetune": 3,
    # 4: front ends: command line, cluster, napari
    "cli": 4, "_cli_train": 4, "distributed": 4, "_widgets": 4, "_reader": 4, "_writer": 4, "_sample_data": 4,
    "__main__": 4,
}
LAYER_NAMES = {0: "files, metadata, metrics", 1: "model, inference, objects", 2: "training, postprocess",
               3: "api", 4: "front ends"}
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str  # dotted module name under the package ("" for __init__)
    target: str
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (under the package; "" for its ``__init__``)."""
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _resolve(node: ast.ImportFrom | ast.Import, source: str, mods: dict[str, Path]) -> list[str]:
    """The package modules ``node`` (in module ``source``) imports."""
    found: list[str] = []

    def add(name: str) -> None:
        while name not in mods and "." in name:  # a name inside a module
            name = name.rsplit(".", 1)[0]
        if name in mods:
            found.append(name)

    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                add(alias.name[len(PACKAGE) + 1 :])
        return found
    if node.level:
        here = source.split(".") if source else []
        if not _is_package(source, mods):
            here = here[:-1]
        if node.level - 1 > len(here):
            return found
        base = here[: len(here) - (node.level - 1)]
        base_name = ".".join(base + (node.module.split(".") if node.module else []))
    elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
        base_name = node.module[len(PACKAGE) + 1 :]
    else:
        return found
    for alias in node.names:
        sub = f"{base_name}.{alias.name}" if base_name else alias.name
        add(sub if sub in mods else base_name)
    return found


def imports(mods: dict[str, Path] | None = None) -> list[Import]:
    """Every import of a package module by a package module, anywhere in its code."""
    mods = modules() if mods is None else mods
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                out += [Import(name, t, node.lineno) for t in _resolve(node, name, mods) if t != name]
    return out


def top(name: str) -> str:
    return name.split(".", 1)[0]


def layer(name: str) -> int | None:
    return LAYERS.get(top(name))


def circles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(mods: dict[str, Path] | None = None) -> list[tuple[str, str, int, int]]:
    """(module, qualified name, first line, lines) of every function or method over the limit."""
    mods = modules() if mods is None else mods
    out = []

    def walk(node: ast.AST, prefix: str, name: str, path: Path) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}{child.name}"
                n = child.end_lineno - child.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append((name, qual, child.lineno, n))
                walk(child, f"{qual}.", name, path)
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.", name, path)
            else:
                walk(child, prefix, name, path)

    for name, path in mods.items():
        walk(ast.parse(path.read_text(), str(path)), "", name, path)
    return out


def _label(name: str) -> str:
    return f"{PACKAGE}.{name}" if name else PACKAGE


# --------------------------------------------------------------------------- the tests


def test_imports_are_read():
    """The reader of imports itself: a few imports known to exist are found."""
    found = {(e.source, e.target) for e in imports()}
    assert ("inference", "model") in found  # module level, relative
    assert ("cli", "io") in found  # inside a function
    assert len(found) > 40


def test_every_module_has_a_layer():
    unknown = sorted({top(m) for m in modules() if layer(m) is None})
    assert not unknown, (f"modules without a layer: {', '.join(unknown)}; add them to LAYERS in "
                         "tests/test_architecture.py (and regenerate docs/architecture.md)")


def test_no_import_goes_up_a_layer():
    bad = [f"{_label(e.source)} (layer {layer(e.source)}) imports {_label(e.target)} "
           f"(layer {layer(e.target)}) at line {e.line}"
           for e in imports() if None not in (layer(e.source), layer(e.target))
           and layer(e.target) > layer(e.source)]
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_import_circle():
    edges = imports()
    found = circles(edges)
    lines = []
    for comp in found:
        inner = [e for e in edges if e.source in comp and e.target in comp]
        lines.append("circle between " + ", ".join(_label(m) for m in comp) + ": " + "; ".join(
            f"{e.source} -> {e.target} (line {e.line})" for e in inner))
    assert not found, "import circles:\n" + "\n".join(lines)


def test_no_function_over_80_lines():
    bad = [f"{_label(m)}.{q} (line {ln}) is {n} lines" for m, q, ln, n in long_functions()]
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(bad)


def test_no_module_over_500_lines():
    bad = []
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            bad.append(f"{_label(name)} ({path.relative_to(SRC.parent)}) is {n} lines")
    assert not bad, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_forbid(tmp_path):
    """The circle finder and the reader of relative imports on a made-up graph."""
    e = [Import("a", "b", 1), Import("b", "c", 1), Import("c", "a", 1), Import("c", "d", 1)]
    assert circles(e) == [["a", "b", "c"]]
    assert circles(e[:2]) == []
    mods = {"": Path("__init__.py"), "io": Path("io.py"), "pkg": Path("pkg/__init__.py"),
            "pkg.x": Path("pkg/x.py"), "pkg.y": Path("pkg/y.py")}
    tree = ast.parse("from . import x\nfrom ..io import read\nfrom napari_mitoseg.pkg import y, z\n")
    got = [_resolve(n, "pkg.y", mods) for n in tree.body]
    assert got == [["pkg.x"], ["io"], ["pkg.y", "pkg"]]


def test_the_picture_in_the_docs_is_the_code():
    text = DOC.read_text()
    assert mermaid() in text, ("docs/architecture.md's layer picture differs from the code's imports; "
                               "regenerate it: python tests/test_architecture.py --write")


# --------------------------------------------------------------------------- the picture


BEGIN, END = "<!-- layers: generated by tests/test_architecture.py -->", "<!-- end of layers -->"


def mermaid() -> str:
    """The layers as a mermaid graph: one box per top-level module or package, an arrow for
    each "imports" between them, layers as stacked groups (front ends on top)."""
    names = sorted({top(m) for m in modules()} - {""})
    edges = sorted({(top(e.source), top(e.target)) for e in imports()
                    if top(e.source) != top(e.target) and "" not in (top(e.source), top(e.target))})
    packages = {top(m) for m in modules() if "." in m}
    lines = ["```mermaid", "flowchart TB"]
    for lvl in sorted(set(LAYERS.values()), reverse=True):
        lines.append(f'  subgraph L{lvl}["{lvl}: {LAYER_NAMES[lvl]}"]')
        for n in names:
            if LAYERS.get(n) == lvl:
                shown = f"{n}/" if n in packages else n
                lines.append(f'    {n.strip("_")}_m["{shown}"]')
        lines.append("  end")
    for a, b in edges:
        lines.append(f"  {a.strip('_')}_m --> {b.strip('_')}_m")
    lines.append("```")
    return "\n".join([BEGIN, *lines, END])


def write_doc() -> None:
    text = DOC.read_text()
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: mermaid(), text, flags=re.S)
    DOC.write_text(new)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_doc()
    else:
        print(mermaid())
