"""The layers of the code base, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` counts: at module level, under ``TYPE_CHECKING``, and
inside functions. The rules:

* ``pipeline/`` has no import cycle (relative and absolute imports; ``pipeline.x.y`` is the
  module ``pipeline/x/y.py`` or the package ``pipeline/x/y/``);
* only ``pipeline/server/`` imports aiohttp's server side (``aiohttp.web``, ``aiohttp.web_*``);
* no module under ``pipeline/`` imports ``stages`` (the runtime loads them by name);
* the runtime never imports the server package; only the composition root
  (``pipeline/service.py``, which starts the HTTP server when a config asks for one) may.

A rule is one ``test_*`` function over ``imports_under(...)``; the helpers below resolve each
import to the absolute dotted names it may load (``Import.targets``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = "pipeline.server"
COMPOSITION_ROOTS = frozenset({"pipeline.service"})
"""Runtime modules that may import the server package: they wire runtime and server together."""


@dataclass(frozen=True)
class Import:
    """One import statement of ``module`` (a dotted name), resolved to absolute names."""

    module: str
    line: int
    statement: str
    targets: tuple[str, ...]
    """What it may load: ``import a.b`` -> ``a.b``; ``from a import b, c`` -> ``a.b``, ``a.c``
    (each may be a submodule; ``a`` itself is loaded either way and also listed)."""

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}: {self.statement})"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(package: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / package.replace(".", "/")).rglob("*.py") if "__pycache__" not in p.parts)


def parse_imports(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import in the file, wherever it sits, with relative ones made absolute."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = tuple(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.module, node.level, path)
            targets = (base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*"))
        else:
            continue
        found.append(Import(module, node.lineno, ast.unparse(node), targets))
    return sorted(found, key=lambda i: i.line)


def _absolute(package: str, name: str | None, level: int, path: Path) -> str:
    if level == 0:
        assert name is not None
        return name
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        raise AssertionError(f"{path}: a relative import climbs above the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_under(package: str, root: Path = ROOT) -> list[Import]:
    return [imp for path in source_files(package, root) for imp in parse_imports(path, root)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# --- cycles -----------------------------------------------------------------------------------


def import_graph(imports: Iterable[Import], modules: Iterable[str]) -> dict[str, dict[str, Import]]:
    """module -> {module it imports: the first import that does}, among ``modules`` only.

    ``from pkg import name`` is an edge to ``pkg.name`` where that is one of ``modules``, else to
    ``pkg`` (a name defined in the package's ``__init__``)."""
    known = set(modules)
    graph: dict[str, dict[str, Import]] = {m: {} for m in known}
    for imp in imports:
        for target in _resolve(imp, known):
            if target != imp.module:
                graph[imp.module].setdefault(target, imp)
    return graph


def _resolve(imp: Import, known: set[str]) -> set[str]:
    first, *names = imp.targets
    if not names or imp.statement.startswith("import "):  # import a.b, c
        return {t for t in imp.targets if t in known}
    hits = {t for t in names if t in known}
    if len(hits) < len(names) and first in known:
        hits.add(first)
    return hits


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[Import]]:
    """One cycle (as the imports that close it) per strongly connected part with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan, recursive: the graph is a few dozen modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            part = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.add(member)
                if member == node:
                    break
            if len(part) > 1:
                parts.append(part)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, part) for part in parts]


def _cycle_in(graph: dict[str, dict[str, Import]], part: set[str]) -> list[Import]:
    """A shortest cycle through the part's first module (breadth first)."""
    start = min(part)
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for successor, imp in sorted(graph[node].items()):
            if successor == start:
                return [*paths[node], imp]
            if successor in part and successor not in paths:
                paths[successor] = [*paths[node], imp]
                queue.append(successor)
    raise AssertionError(f"no cycle through {start} in {sorted(part)}")


def describe_cycle(cycle: list[Import]) -> str:
    return " -> ".join([*(imp.module for imp in cycle), cycle[0].module]) + "".join(f"\n    {imp}" for imp in cycle)


# --- the rules --------------------------------------------------------------------------------


def violations(imports: Iterable[Import], *, allowed: Iterable[str] = (), forbidden: str) -> Iterator[str]:
    """Each import of ``forbidden`` (a package, or a predicate's name) by a module not allowed."""
    allowed = tuple(allowed)
    for imp in imports:
        if any(_within(imp.module, a) for a in allowed):
            continue
        hits = [t for t in imp.targets if _within(t, forbidden)]
        if hits:
            yield f"{imp} imports {hits[0]}"


def test_pipeline_has_no_import_cycle() -> None:
    imports = imports_under("pipeline")
    modules = {module_name(p) for p in source_files("pipeline")}
    cycles = find_cycles(import_graph(imports, modules))
    assert not cycles, "import cycles in pipeline/:\n" + "\n".join(describe_cycle(c) for c in cycles)


def _aiohttp_server_side(imports: Iterable[Import]) -> Iterator[str]:
    for imp in imports:
        for target in imp.targets:
            top, _, rest = target.partition(".")
            if top == "aiohttp" and rest.split(".")[0].startswith("web"):
                yield f"{imp} imports {target}"
                break


def test_only_the_server_imports_aiohttp_web() -> None:
    outside = [i for i in imports_under("pipeline") + imports_under("stages") if not _within(i.module, SERVER)]
    offenders = list(_aiohttp_server_side(outside))
    assert not offenders, "aiohttp's server side outside pipeline/server/:\n" + "\n".join(offenders)


def test_the_runtime_never_imports_stages() -> None:
    offenders = list(violations(imports_under("pipeline"), forbidden="stages"))
    assert not offenders, "pipeline/ imports the stages package:\n" + "\n".join(offenders)


def test_the_runtime_never_imports_the_server() -> None:
    imports = imports_under("pipeline") + imports_under("stages")
    offenders = list(violations(imports, allowed=[SERVER, *COMPOSITION_ROOTS], forbidden=SERVER))
    assert not offenders, "the runtime imports the server package:\n" + "\n".join(offenders)


def test_stages_have_no_import_cycle() -> None:
    imports = imports_under("stages")
    modules = {module_name(p) for p in source_files("stages")}
    cycles = find_cycles(import_graph(imports, modules))
    assert not cycles, "import cycles in stages/:\n" + "\n".join(describe_cycle(c) for c in cycles)


def family(module: str) -> str | None:
    """A stage module's family: ``stages.text`` for ``stages.text.text_crops``, ``stages.infer`` for
    ``stages.infer``; None for the ``stages`` package itself (it imports every family to register them)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "stages" and len(parts) > 1 else None


def sibling_family_imports(imports: Iterable[Import]) -> Iterator[str]:
    """Each import by a stage module of another family's module (what stages share lives in the
    runtime: ``pipeline.media``, ``pipeline.tensors``)."""
    for imp in imports:
        mine = family(imp.module)
        if mine is None:
            continue
        for target in imp.targets:
            theirs = family(target)
            if theirs is not None and theirs != mine:
                yield f"{imp} imports {target}, of the {theirs} family"
                break


def test_a_stage_module_never_imports_another_family() -> None:
    offenders = list(sibling_family_imports(imports_under("stages")))
    assert not offenders, "stage modules importing another family:\n" + "\n".join(offenders)


# --- the helpers themselves, on a made-up tree --------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_imports_are_found_everywhere_and_made_absolute(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from . import a\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from ..a import A\n"
                "def f():\n    import aiohttp.web\n    from aiohttp import web\n"
                "class C:\n    def g(self):\n        from . import c as renamed\n"
                "from pkg.sub.c import *\n"
            ),
        },
    )
    imports = imports_under("pkg", tmp_path)
    targets = {(i.module, t) for i in imports for t in i.targets}
    assert ("pkg", "pkg.a") in targets
    assert ("pkg.sub.b", "pkg.a.A") in targets  # under TYPE_CHECKING
    assert ("pkg.sub.b", "aiohttp.web") in targets  # inside a function, both spellings
    assert ("pkg.sub.b", "pkg.sub.c") in targets  # inside a method; and the star import
    assert len(list(_aiohttp_server_side(imports))) == 2
    assert next(_aiohttp_server_side(imports)).startswith("pkg.sub.b (line 5: import aiohttp.web)")


def test_a_cycle_is_reported_with_the_imports_that_close_it(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import x\n",
            "pkg/b.py": "def f():\n    from pkg.sub import c\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from .. import a\nfrom pkg import d\n",
            "pkg/d.py": "import pkg.e\n",
            "pkg/e.py": "",
        },
    )
    modules = {module_name(p, tmp_path) for p in source_files("pkg", tmp_path)}
    graph = import_graph(imports_under("pkg", tmp_path), modules)
    assert set(graph["pkg.sub.c"]) == {"pkg.a", "pkg.d"}
    (cycle,) = find_cycles(graph)
    assert [i.module for i in cycle] == ["pkg.a", "pkg.b", "pkg.sub.c"]
    text = describe_cycle(cycle)
    assert text.startswith("pkg.a -> pkg.b -> pkg.sub.c -> pkg.a")
    assert "pkg.b (line 2: from pkg.sub import c)" in text


def test_violations_name_the_module_and_the_import(tmp_path: Path) -> None:
    _tree(tmp_path, {"pkg/__init__.py": "", "pkg/x.py": "import stages.infer\n", "pkg/ok/y.py": "import stages\n"})
    found = list(violations(imports_under("pkg", tmp_path), allowed=["pkg.ok"], forbidden="stages"))
    assert found == ["pkg.x (line 1: import stages.infer) imports stages.infer"]


@pytest.mark.parametrize(
    ("package", "name", "level", "expected"),
    [("pkg.sub", "a", 1, "pkg.sub.a"), ("pkg.sub", None, 2, "pkg"), ("pkg", "x", 0, "x")],
)
def test_relative_names(package: str, name: str | None, level: int, expected: str) -> None:
    assert _absolute(package, name, level, Path("f.py")) == expected


def test_a_sibling_family_import_is_named(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "stages/__init__.py": "from . import text, infer\n",
            "stages/infer.py": "from pipeline.tensors import ModelOutput\n",
            "stages/text/__init__.py": "from . import crops\n",
            "stages/text/crops.py": "from .detect import boxes\nfrom stages.infer import ModelOutput\n",
            "stages/text/detect.py": "import numpy\n",
        },
    )
    found = list(sibling_family_imports(imports_under("stages", root=tmp_path)))
    assert len(found) == 1 and "stages.text.crops" in found[0] and "stages.infer family" in found[0]
