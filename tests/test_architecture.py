"""The shape of ``src/callrec``: imports run down a fixed map of layers, without circles; modules and classes
stay small enough to read. Run alone with ``.venv/bin/pytest -q tests/test_architecture.py``.

Every module is parsed with ``ast`` (nothing is imported). An import counts wherever it stands — at module
level or inside a function, since a late import is still a dependency — except under
``if TYPE_CHECKING:``, which only names a type for mypy and never runs.

The layers, bottom to top (a module may import its own layer and those below it, never one above):

0. ``callrec`` (the package: its version), ``errors``, ``config``, ``names``, ``models``, ``media_limits``,
   ``secretbox``, and ``service.egress``: the egress policy that ``config`` checks ``CALLREC_EGRESS_ALLOW``
   with and ``storage.s3`` obeys, which imports nothing of callrec but ``errors`` (it lies in ``service/``
   for its readers, not for what it needs). Settings, the exception tree, safe names and the shared
   dataclasses, which everybody may use.
1. ``wire``: RTP, SIP, SDP, rs-metadata, IP/UDP parsing. Formats only: nothing of media, files or calls.
2. ``files`` (pcap, pcapng, tapes) and ``media`` (codecs, timelines, mixer, encoders): both build on the
   wire formats; neither knows the other.
3. ``mix`` (the mixer run on a capture or tape: files and media together), ``storage`` (object stores),
   ``db`` (the schema and its queries: the only SQL, over plain rows and JSON; the types the service reads
   them into, like ``DomainSettings``, live in ``service``).
4. ``recorder`` (the live SRS, writing tapes), ``live`` (passive capture from an interface) and ``service``
   (what jobs and api share: the pipeline, the queue, settings, retention, the rtpengine spool). The
   recorder and the service do not know each other: the entry points hand one's tapes to the other.
5. ``jobs``: each job a few steps on the service.
6. ``api`` (JSON) and ``web`` (HTML for people): the HTTP faces, on the service; never on jobs (they queue
   work through the service, and refusals reach them as the exception tree's domain errors).
7. ``app`` (the FastAPI app assembled from api and web), ``runner``, ``serve``, ``cli`` (with its
   ``typer_fixes`` and ``keys``), ``__main__``: the entry points that wire everything together.

A module takes the layer of the longest name in the map that it is or lies under; a module the map does
not place fails the first test, so a new package has to be given its place here. Circles are looked for
between those units (packages, top-level modules, the modules named on their own). Within a layer imports
may run either way, except between the units ``APART`` names ("neither knows the other" above).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "callrec"

LAYERS: list[tuple[str, ...]] = [
    (
        "callrec",
        "callrec.errors",
        "callrec.config",
        "callrec.names",
        "callrec.models",
        "callrec.media_limits",
        "callrec.secretbox",
        "callrec.service.egress",
    ),
    ("callrec.wire",),
    ("callrec.files", "callrec.media"),
    ("callrec.mix", "callrec.storage", "callrec.db"),
    ("callrec.recorder", "callrec.live", "callrec.service"),
    ("callrec.jobs",),
    ("callrec.api", "callrec.web"),
    (
        "callrec.app",
        "callrec.runner",
        "callrec.serve",
        "callrec.cli",
        "callrec.__main__",
    ),
]

# units of one layer that must not import each other, either way
APART: list[tuple[str, str]] = [
    ("callrec.files", "callrec.media"),
    ("callrec.recorder", "callrec.service"),
    ("callrec.api", "callrec.jobs"),
    ("callrec.web", "callrec.jobs"),
]

MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300
# modules allowed past MAX_MODULE_LINES, each with its reason: only a whole wire or file format read top to
# bottom as one spec may be (none is today: wire/siprec.py and files/rtpengine.py were, until their split)
LONG_MODULES: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Import:
    """``module`` imports ``target`` at ``line``."""

    module: str
    target: str
    line: int


def modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``src``: dotted name -> file (a package by its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(src: Path = SRC, package: str = PACKAGE) -> list[Import]:
    """Every import of one module of ``package`` by another (itself excluded), outside ``TYPE_CHECKING``.

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b``: a name that is no module
    counts as the nearest module above it.
    """
    mods = modules(src, package)
    found: list[Import] = []
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text("utf-8"), str(path))):
            resolved = {_nearest(target, mods) for target in _targets(node, here)}
            found.extend(Import(name, t, node.lineno) for t in sorted(r for r in resolved if r not in (None, name)))
    return found


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements in ``node``, at any depth, leaving out the bodies of ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _import_nodes(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, here: str) -> list[str]:
    """The dotted names ``node`` imports (``from a import b``: ``a.b``, a module or a name in ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = here.split(".")[: len(here.split(".")) - node.level + 1]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    return [f"{origin}.{alias.name}" for alias in node.names]


def _nearest(target: str, mods: dict[str, Path]) -> str | None:
    """``target`` or the nearest module above it that exists in ``mods``; None outside the package."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in mods:
            return name
        parts.pop()
    return None


def layer_of(module: str, layers: list[tuple[str, ...]] = LAYERS) -> tuple[int, str] | None:
    """(layer index, map entry) of the longest entry of ``layers`` that ``module`` is or lies under."""
    best: tuple[int, str] | None = None
    for index, names in enumerate(layers):
        for entry in names:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    return best


def unplaced(mods: dict[str, Path], layers: list[tuple[str, ...]] = LAYERS) -> list[str]:
    return sorted(m for m in mods if layer_of(m, layers) is None)


def upward(found: list[Import], layers: list[tuple[str, ...]] = LAYERS) -> list[str]:
    """One line per import that runs up a layer."""
    lines: list[str] = []
    for imp in found:
        low, high = layer_of(imp.module, layers), layer_of(imp.target, layers)
        if low is not None and high is not None and high[0] > low[0]:
            lines.append(
                f"{imp.module} (line {imp.line}) imports {imp.target}: layer {low[0]} ({low[1]}) up to"
                f" layer {high[0]} ({high[1]})"
            )
    return sorted(set(lines))


def crossings(found: list[Import], apart: list[tuple[str, str]], layers: list[tuple[str, ...]] = LAYERS) -> list[str]:
    """One line per import between two units that ``apart`` keeps from each other."""
    pairs = {frozenset(p) for p in apart}
    lines: list[str] = []
    for imp in found:
        a, b = layer_of(imp.module, layers), layer_of(imp.target, layers)
        if a is not None and b is not None and frozenset((a[1], b[1])) in pairs:
            lines.append(f"{imp.module} (line {imp.line}) imports {imp.target}: {a[1]} and {b[1]} are kept apart")
    return sorted(set(lines))


def cycles(found: list[Import], layers: list[tuple[str, ...]] = LAYERS) -> list[str]:
    """One line per circle between units (map entries): the units around it and one import per step."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in found:
        a, b = layer_of(imp.module, layers), layer_of(imp.target, layers)
        if a is not None and b is not None and a[1] != b[1]:
            edges.setdefault(a[1], {}).setdefault(b[1], imp)
    lines: list[str] = []
    for component in _strongly_connected(edges):
        if len(component) < 2:
            continue
        path = _circle(component, edges)
        steps = [edges[a][b] for a, b in zip(path, path[1:], strict=False)]
        lines.append(
            " -> ".join(path) + ": " + "; ".join(f"{s.module} (line {s.line}) imports {s.target}" for s in steps)
        )
    return sorted(lines)


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's strongly connected components of the unit graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, {})):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            found.append(component)

    nodes = sorted(set(edges) | {b for succ in edges.values() for b in succ})
    for node in nodes:
        if node not in index:
            visit(node)
    return found


def _circle(component: set[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """A shortest circle through the first unit of ``component`` (by name), start repeated at the end."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(edges.get(node, {})):
            if succ == start:
                return [*paths[node], start]
            if succ in component and succ not in paths:
                paths[succ] = [*paths[node], succ]
                queue.append(succ)
    raise AssertionError(f"no circle through {start}")  # a strongly connected component always has one


def long_modules(mods: dict[str, Path], limit: int = MAX_MODULE_LINES) -> dict[str, int]:
    sizes = {m: len(p.read_text("utf-8").splitlines()) for m, p in mods.items()}
    return {m: n for m, n in sizes.items() if n > limit}


def long_classes(mods: dict[str, Path], limit: int = MAX_CLASS_LINES) -> list[str]:
    found: list[str] = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found.append(f"{name}.{node.name}: {length} lines (line {node.lineno})")
    return sorted(found)


# the tree


def test_every_module_has_a_layer() -> None:
    missing = unplaced(modules())
    assert not missing, "modules the layer map (LAYERS in this file) does not place: " + ", ".join(missing)


def test_no_import_circle_between_units() -> None:
    found = cycles(imports())
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_import_runs_up_a_layer() -> None:
    found = upward(imports())
    assert not found, "imports that run up a layer:\n" + "\n".join(found)


def test_units_kept_apart_do_not_import_each_other() -> None:
    found = crossings(imports(), APART)
    assert not found, "imports between units kept apart:\n" + "\n".join(found)


def test_no_module_is_too_long() -> None:
    mods = modules()
    over = {m: n for m, n in long_modules(mods).items() if m not in LONG_MODULES}
    listed = ", ".join(f"{m} ({n})" for m, n in sorted(over.items()))
    assert not over, f"modules over {MAX_MODULE_LINES} lines (none but LONG_MODULES may be): {listed}"
    stale = sorted(m for m in LONG_MODULES if m not in mods or m not in long_modules(mods))
    assert not stale, "LONG_MODULES names modules that are gone or short now: " + ", ".join(stale)


def test_no_class_is_too_long() -> None:
    found = long_classes(modules())
    assert not found, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(found)


# the checks themselves, on a made-up package


def _package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")


TOY_LAYERS: list[tuple[str, ...]] = [("pkg", "pkg.low"), ("pkg.mid",), ("pkg.top",)]


def test_an_import_inside_a_function_that_runs_up_is_found(tmp_path: Path) -> None:
    _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f() -> None:\n    from pkg.top import x\n",
        "mid/__init__.py": "",
        "mid/a.py": "from pkg import low\n",
        "top.py": "x = 1\n",
    })  # fmt: skip
    found = imports(tmp_path, "pkg")
    assert upward(found, TOY_LAYERS) == ["pkg.low (line 2) imports pkg.top: layer 0 (pkg.low) up to layer 2 (pkg.top)"]
    assert cycles(found, TOY_LAYERS) == []


def test_a_type_checking_import_does_not_count(tmp_path: Path) -> None:
    _package(tmp_path, {
        "__init__.py": "",
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top import x\nelse:\n    x = 1\n",
        "top.py": "from pkg.low import x\n",
    })  # fmt: skip
    found = imports(tmp_path, "pkg")
    assert [(i.module, i.target) for i in found] == [("pkg.top", "pkg.low")]
    assert upward(found, TOY_LAYERS) == []


def test_a_circle_is_named_with_its_imports(tmp_path: Path) -> None:
    _package(tmp_path, {
        "__init__.py": "",
        "mid/__init__.py": "",
        "mid/a.py": "from ..mid import b\nfrom pkg.top import y\n",
        "mid/b.py": "",
        "top.py": "import pkg.mid.a\ny = 2\n",
    })  # fmt: skip
    found = imports(tmp_path, "pkg")
    assert cycles(found, TOY_LAYERS) == [
        "pkg.mid -> pkg.top -> pkg.mid: pkg.mid.a (line 2) imports pkg.top; pkg.top (line 1) imports pkg.mid.a"
    ]
    assert unplaced(modules(tmp_path, "pkg"), [("pkg.mid", "pkg.top")]) == ["pkg"]


def test_long_modules_and_classes_are_found(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    _package(tmp_path, {"__init__.py": "", "big.py": f"class Big:\n{body}\n\nclass Small:\n    pass\n"})
    mods = modules(tmp_path, "pkg")
    assert long_modules(mods, limit=8) == {"pkg.big": 10}
    assert long_classes(mods, limit=5) == ["pkg.big.Big: 6 lines (line 1)"]


def test_the_layer_map_names_each_unit_once_and_only_what_exists() -> None:
    entries = [e for names in LAYERS for e in names]
    assert sorted(e for e in set(entries) if entries.count(e) > 1) == []
    assert sorted(set(entries) - set(modules())) == [], "LAYERS names modules that are gone"
    assert sorted({e for pair in APART for e in pair} - set(entries)) == [], "APART names units LAYERS does not"


def test_an_import_between_units_kept_apart_is_found(tmp_path: Path) -> None:
    _package(tmp_path, {
        "__init__.py": "",
        "low.py": "",
        "mid/__init__.py": "",
        "mid/a.py": "def f() -> None:\n    from pkg import low\n",
    })  # fmt: skip
    found = imports(tmp_path, "pkg")
    assert crossings(found, [("pkg.mid", "pkg.low")], TOY_LAYERS) == [
        "pkg.mid.a (line 2) imports pkg.low: pkg.mid and pkg.low are kept apart"
    ]
    assert crossings(found, [("pkg.top", "pkg.low")], TOY_LAYERS) == []
