"""The code's shape, checked from the source text alone (``ast``; nothing is imported, no model is loaded).

* no import circle inside ``core`` at module granularity. Every import counts: module level, inside functions,
  and under ``if TYPE_CHECKING:``, because a lazy import that only dodges a circle still leaves the circle;
* ``core`` never imports streamlit or the UI (``ui``, ``pages``, ``streamlit_app``, ``app_config``), nor the
  layers that use it (``tools``, ``bench``), at any level;
* ``core`` and ``tools`` never import the training script ``train``: what they share with it lives in ``core``;
* no function (methods and nested functions included) is over ``MAX_FUNCTION_LINES`` lines outside ``tests/``;
* the README (less its generated blocks), ``docs/`` and every docstring or comment name only modules that
  exist: a quoted dotted name (````core.io.decode.decode_image````) resolves to a module and one of its top-level
  names, a path (``core/io/decode.py``) to a file, and a command (``python -m core.batch``) to a module that runs.

``docs/architecture.md`` describes the layering these tests hold in place.
"""
from __future__ import annotations

import ast
import functools
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"

MAX_FUNCTION_LINES = 80
# Folders that hold no project code: tests are exempt from the length rule; the rest are environments,
# caches and outputs.
_SKIP_DIRS = {"tests", ".venv", "venv", "env", "node_modules", "__pycache__", "build", "dist"}
_SKIP_TOP_DIRS = {"runs", "artifacts", "data"}  # git-ignored outputs at the repository root (core/data is code)
_UI_ROOTS = {"streamlit", "ui", "pages", "streamlit_app", "app_config"}


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to an absolute dotted name (``core.io.dicom``)."""

    target: str
    line: int


def _project_py_files() -> list[Path]:
    """Every .py file of the project outside tests and environments, sorted."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        skip = _SKIP_DIRS | (_SKIP_TOP_DIRS if Path(folder) == ROOT else set())
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return sorted(found)


def _module_name(path: Path) -> str:
    """``core/io/dicom.py`` -> ``core.io.dicom``; ``core/io/__init__.py`` -> ``core.io``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, tree: ast.Module) -> list[Import]:
    """Every import anywhere in ``tree`` (functions, classes, ``if`` blocks included), made absolute.

    ``from pkg import name`` yields both ``pkg`` and ``pkg.name``: which of the two is a module is decided by the
    caller, which knows the module list.
    """
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: one level is this package, each further level one package up
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(p for p in base_parts if p)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.append(Import(base, node.lineno))
            found += [Import(f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def _core_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """``{module: {imported core module: line}}`` over every module of ``core``, and each module's file."""
    files = {_module_name(p): p for p in _project_py_files() if p.is_relative_to(CORE)}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for imp in _imports(path, _parse(path)):
            target = imp.target
            # `from core.io import dicom` names the module core.io.dicom; `from core.io.types import X`
            # names core.io.types: walk up to the longest prefix that is a module of core.
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, imp.line)
        graph[module] = edges
    return graph, files


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """The shortest import path ``start -> ... -> start`` through the modules of ``within`` (breadth first)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt not in within:
                continue
            if nxt == start:
                back = [node]  # node, its parent, ..., start
                while back[-1] != start:
                    back.append(parent[back[-1]])
                return back[::-1] + [start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start} is in a component but on no cycle")


def _describe_cycle(graph: dict[str, dict[str, int]], files: dict[str, Path], cycle: list[str]) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each arrow with the line of the import that makes it."""
    steps = []
    for here, nxt in zip(cycle, cycle[1:]):
        rel = files[here].relative_to(ROOT).as_posix()
        steps.append(f"{here} ({rel}:{graph[here][nxt]})")
    return " -> ".join(steps + [cycle[-1]])


def test_core_has_no_import_circle() -> None:
    graph, files = _core_graph()
    circles = []
    for component in _strongly_connected(graph):
        cycle = _shortest_cycle(graph, component[0], set(component))
        circles.append(f"{{{', '.join(component)}}}\n    e.g. {_describe_cycle(graph, files, cycle)}")
    assert not circles, "import circles inside core (module-level and function-level imports):\n  " + "\n  ".join(
        circles
    )


def _imports_of_roots(folder: Path, roots: set[str]) -> list[str]:
    """``file:line: imports root`` for every import under ``folder`` whose top-level package is in ``roots``."""
    offending = set()
    for path in _project_py_files():
        if not path.is_relative_to(folder):
            continue
        for imp in _imports(path, _parse(path)):
            root = imp.target.split(".")[0]
            if root in roots:
                offending.add(f"{path.relative_to(ROOT).as_posix()}:{imp.line}: imports {root}")
    return sorted(offending)


def test_core_never_imports_the_ui() -> None:
    offending = _imports_of_roots(CORE, _UI_ROOTS)
    assert not offending, "core must stay UI-free (no streamlit, ui, pages):\n  " + "\n  ".join(offending)


def test_core_never_imports_the_layers_above_it() -> None:
    offending = _imports_of_roots(CORE, {"tools", "bench"})
    assert not offending, "core is the bottom layer; tools and bench use it, not the reverse:\n  " + "\n  ".join(
        offending
    )


def test_core_and_tools_never_import_the_training_script() -> None:
    offending = _imports_of_roots(CORE, {"train"}) + _imports_of_roots(ROOT / "tools", {"train"})
    assert not offending, "train.py is a script, not a library; move what is shared into core:\n  " + "\n  ".join(
        offending
    )


def _long_functions(path: Path) -> list[str]:
    """``file:qualified.name: N lines`` for each function in ``path`` longer than the limit.

    A function's length runs from its ``def`` line to its last line, docstring, comments and nested functions
    included; decorators are not counted.
    """
    found = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT).as_posix()}:{name}: {lines} lines")
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(_parse(path), "")
    return found


def test_no_function_over_the_line_limit() -> None:
    too_long = [entry for path in _project_py_files() for entry in _long_functions(path)]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split into named steps):\n  " + "\n  ".join(
        too_long
    )


def test_the_structure_checks_see_the_project() -> None:
    """Guards the checks above against passing vacuously (a wrong root, a skipped folder)."""
    modules = {_module_name(p) for p in _project_py_files()}
    assert {"core.preprocess", "core.inference.predictor", "train", "streamlit_app"} <= modules
    assert not any(m.startswith(("tests.", ".venv")) for m in modules)
    graph, _ = _core_graph()
    assert "core.inference.predictor" in graph["core.inference.pipeline"]


def test_import_resolution_and_cycle_finder_on_known_input() -> None:
    """The helpers the checks rest on: relative and function-level imports resolve, a planted circle is found."""
    source = "from . import dicom\nfrom ..model.card import ModelCard\ndef f():\n    import core.review.folder\n"
    targets = {imp.target for imp in _imports(CORE / "io" / "decode.py", ast.parse(source))}
    assert {"core.io.dicom", "core.model.card", "core.model.card.ModelCard", "core.review.folder"} <= targets
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"a": 5}}
    assert _strongly_connected(graph) == [["a", "b", "c"]]
    assert _shortest_cycle(graph, "a", {"a", "b", "c"}) == ["a", "b", "c", "a"]


# Dotted names of core inside backticks (Markdown code, reST literals, :mod:/:func: roles), and paths of .py files
# under core, ui, pages, tools or bench.
_QUOTED_DOTTED = re.compile(r"`~?(core(?:\.[A-Za-z_]\w*)+)")
_PATH = re.compile(r"(?<![\w./-])((?:core|ui|pages|tools|bench)/[\w/]+\.py)\b")
# Commands the README and docstrings quote (python, -m, a module of this repository) must still run; a pattern
# such as bench.sections.<name> is not a command.
_COMMAND = re.compile(r"python3? -m ((?:core|tools|bench|ui|tests)(?:\.\w+)*)(?!\w|\.[\w<{\[*])")
_GENERATED_MARKER = re.compile(r"<!-- generated:[\w-]+ (start|end) -->")


@functools.cache
def _top_level_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (``if``/``try`` blocks included)."""
    names: set[str] = set()
    stack: list[ast.stmt] = list(_parse(path).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            stack += [*node.body, *node.orelse, *getattr(node, "handlers", []), *getattr(node, "finalbody", [])]
        elif isinstance(node, ast.ExceptHandler):
            stack += node.body
    return frozenset(names)


def _dotted_name_problem(dotted: str, modules: dict[str, Path]) -> str | None:
    """None when ``dotted`` is a module of core or a top-level name of one, else what is missing."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        if module in modules:
            if i == len(parts) or parts[i] in _top_level_names(modules[module]):
                return None
            return f"{module} has no {parts[i]}"
    return "no such module"


def _runnable(module: str) -> bool:
    """Whether ``python -m module`` finds a file to run in this repository."""
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def _written_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of ``path``, less the README's generated blocks.

    Those blocks are rendered from recorded results by ``tools/readme_sections.py`` (``tests/test_readme.py``
    checks them); a command recorded there is history, and the renderer's own text is checked in its source.
    """
    generated = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _GENERATED_MARKER.match(line):
            generated = line.rstrip().endswith("start -->")
        elif not generated:
            yield number, line


def test_docs_and_docstrings_name_modules_that_exist() -> None:
    modules = {_module_name(p): p for p in _project_py_files() if p.is_relative_to(CORE)}
    texts = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md")), *_project_py_files(),
             *sorted((ROOT / "tests").glob("*.py"))]
    stale = []
    for path in texts:
        rel = path.relative_to(ROOT).as_posix()
        for number, line in _written_lines(path):
            for match in _QUOTED_DOTTED.finditer(line):
                problem = _dotted_name_problem(match.group(1), modules)
                if problem:
                    stale.append(f"{rel}:{number}: {match.group(1)} ({problem})")
            stale += [f"{rel}:{number}: {m.group(1)} (no such file)" for m in _PATH.finditer(line)
                      if not (ROOT / m.group(1)).is_file()]
            stale += [f"{rel}:{number}: python -m {m.group(1)} (no such module)" for m in _COMMAND.finditer(line)
                      if not _runnable(m.group(1))]
    assert not stale, "names of modules that do not exist (renamed or moved?):\n  " + "\n  ".join(stale)
