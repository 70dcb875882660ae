"""The dependency order of docs/ARCHITECTURE.md, checked on the source with `ast` (nothing is imported).

Every import counts, the ones inside functions included: an import moved into a function to
dodge a cycle is still a cycle. The CLI's lazy imports for start-up time need no exception,
since they point down; one that points up is reported like any other import.

An import resolves to the most specific module it names (`import a.b` -> a.b; `from a import b`
-> a.b when b is a module, else a; relative imports from the importing file's package); the
packages it passes through on the way (a/__init__.py) are not counted, as Python runs them
before anything in them can import back.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("maxlm", "data_pipelines")

# ARCHITECTURE.md's "Dependency order", lowest first. A module imports only its own layer or
# the layers below. An entry is a path from the repo root: a module file (`.py` added) or a
# package directory and everything under it. Entries of the target layout that do not exist
# yet match nothing until they do.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("maxlm/errors",),
    ("maxlm/config", "maxlm/files"),
    ("maxlm/data", "maxlm/models", "maxlm/parallel", "maxlm/losses"),
    ("maxlm/optim",),
    ("maxlm/tasks",),
    ("maxlm/train", "maxlm/infer", "maxlm/ckpt"),
    ("maxlm/eval", "data_pipelines"),
    # maxlm/__init__.py is the public face (`maxlm.from_pretrained`), a caller like the CLI.
    ("maxlm/cli", "maxlm/__init__.py"),
)


@dataclass(frozen=True)
class Import:
    """One first-party import: who imports what, where, and whether inside a function."""

    source: str
    target: str
    path: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = " (in a function)" if self.in_function else ""
        return f"{self.path}:{self.line}: {self.source} -> {self.target}{where}"


def find_modules(repo: Path, roots: tuple[str, ...]) -> dict[str, str]:
    """Returns {dotted module name: path from repo} of every .py file under the root packages."""
    modules = {}
    for root in roots:
        for file in sorted((repo / root).rglob("*.py")):
            rel = file.relative_to(repo)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = rel.as_posix()
    return modules


def _package_of(module: str, path: str) -> str:
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    # The longest prefix that is a module: `import a.b.c` of a package a.b without module c.
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, path: str, modules: dict[str, str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := _resolve(a.name, modules))]
    if node.level:
        base = _package_of(module, path)
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if sub in modules else _resolve(base, modules)
        if target:
            found.append(target)
    return found


def _walk(node: ast.AST, in_function: bool = False):
    for child in ast.iter_child_nodes(node):
        yield child, in_function
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inner)


def find_imports(repo: Path, modules: dict[str, str]) -> list[Import]:
    """Returns every import between the modules, module level and function level alike."""
    found = []
    for module, path in modules.items():
        tree = ast.parse((repo / path).read_text(encoding="utf-8"), filename=path)
        for node, in_function in _walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(_targets(node, module, path, modules)):
                    if target != module:
                        found.append(Import(module, target, path, node.lineno, in_function))
    return found


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Returns the groups of nodes that reach each other (Tarjan), only those of two or more."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(groups)


def _cycle_report(groups: list[list[str]], imports_in: dict[frozenset, list[Import]]) -> list[str]:
    lines = []
    for group in groups:
        lines.append("cycle among " + ", ".join(group) + ":")
        lines += [f"    {imp}" for imp in imports_in[frozenset(group)]]
    return lines


def file_cycles(imports: list[Import]) -> list[str]:
    """Returns one report line per cycle between modules, then the imports inside it."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    groups = strongly_connected(set(edges), edges)
    inside = {frozenset(g): [i for i in imports if i.source in g and i.target in g] for g in groups}
    return _cycle_report(groups, inside)


def _child_of(package: str, module: str) -> str | None:
    if not module.startswith(package + "."):
        return None
    return package + "." + module[len(package) + 1 :].split(".")[0]


def subpackage_cycles(imports: list[Import], modules: dict[str, str]) -> list[str]:
    """Returns the cycles between the children of each package where one child is a package.

    Cycles among plain modules only are file cycles, which `file_cycles` reports.
    """
    packages = {m for m, p in modules.items() if p.endswith("__init__.py")}
    lines = []
    for package in sorted(packages):
        edges: dict[str, set[str]] = {}
        witnesses: dict[tuple[str, str], list[Import]] = {}
        for imp in imports:
            a, b = _child_of(package, imp.source), _child_of(package, imp.target)
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
                witnesses.setdefault((a, b), []).append(imp)
        groups = [g for g in strongly_connected(set(edges), edges) if any(m in packages for m in g)]
        inside = {frozenset(g): sorted((i for (a, b), imps in witnesses.items() if a in g and b in g for i in imps), key=lambda i: (i.path, i.line)) for g in groups}
        lines += _cycle_report(groups, inside)
    return lines


def layer_of(path: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    """Returns the index of the layer whose longest entry holds the file at `path`, or None."""
    best, depth = None, -1
    for i, entries in enumerate(layers):
        for e in entries:
            if (path == e or path == e + ".py" or path.startswith(e + "/")) and len(e) > depth:
                best, depth = i, len(e)
    return best


def layer_violations(imports: list[Import], modules: dict[str, str], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Returns one line per module without a layer and per import that points up the order."""
    lines = [f"{p}: {m} is in no layer of ARCHITECTURE.md" for m, p in modules.items() if layer_of(p, layers) is None]
    for imp in imports:
        src, dst = layer_of(modules[imp.source], layers), layer_of(modules[imp.target], layers)
        if src is not None and dst is not None and dst > src:
            lines.append(f"{imp} points up: {' '.join(layers[src])} imports {' '.join(layers[dst])}")
    return lines


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({sum(not s.startswith('    ') for s in lines)}):\n" + "\n".join(lines)


# --- the resolver itself, on synthetic trees ---------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[dict[str, str], list[Import]]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    modules = find_modules(tmp_path, ("pkg",))
    return modules, find_imports(tmp_path, modules)


def _edges(imports: list[Import]) -> set[tuple[str, str]]:
    return {(i.source, i.target) for i in imports}


def test_a_cycle_through_an_import_inside_a_function_is_caught(tmp_path):
    _, imports = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "def f():\n    from pkg import a\n    return a\n",
    })
    report = file_cycles(imports)
    assert report[0] == "cycle among pkg.a, pkg.b:"
    assert "    pkg/b.py:2: pkg.b -> pkg.a (in a function)" in report
    assert "    pkg/a.py:1: pkg.a -> pkg.b" in report


def test_imports_in_methods_and_lambdas_count_as_in_function(tmp_path):
    _, imports = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "class C:\n    def m(self):\n        import pkg.b\n",
        "pkg/b.py": "",
        "pkg/c.py": "import pkg.b\n",
    })
    assert {(i.source, i.in_function) for i in imports} == {("pkg.a", True), ("pkg.c", False)}


def test_relative_imports_resolve_from_the_files_package(tmp_path):
    _, imports = _tree(tmp_path, {
        "pkg/__init__.py": "from .sub import x\n",
        "pkg/z.py": "def w(): pass\n",
        "pkg/sub/__init__.py": "from . import x\n",
        "pkg/sub/x.py": "from .y import f\nfrom ..z import w\nfrom .. import z\n",
        "pkg/sub/y.py": "def f(): pass\n",
    })
    assert _edges(imports) == {
        ("pkg", "pkg.sub.x"),  # `from .sub import x`: x is a module
        ("pkg.sub", "pkg.sub.x"),  # an __init__'s `.` is its own package
        ("pkg.sub.x", "pkg.sub.y"),
        ("pkg.sub.x", "pkg.z"),  # `from ..z import w`: w is a function of pkg.z
    }


def test_from_import_names_a_submodule_or_an_attribute(tmp_path):
    _, imports = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/data/__init__.py": "VALUE = 1\n",
        "pkg/data/chat.py": "",
        "pkg/a.py": "from pkg.data import chat, VALUE\n",
        "pkg/b.py": "from pkg.data import *\n",
    })
    assert _edges(imports) == {("pkg.a", "pkg.data.chat"), ("pkg.a", "pkg.data"), ("pkg.b", "pkg.data")}


def test_dotted_import_resolves_to_the_deepest_module(tmp_path):
    _, imports = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/data/__init__.py": "",
        "pkg/data/chat.py": "",
        "pkg/a.py": "import pkg.data.chat\nimport pkg.data.missing as m\nimport os, numpy, pkg\n",
    })
    assert _edges(imports) == {("pkg.a", "pkg.data.chat"), ("pkg.a", "pkg.data"), ("pkg.a", "pkg")}


def test_a_cycle_between_subpackages_without_a_file_cycle_is_caught(tmp_path):
    modules, imports = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/train/__init__.py": "",
        "pkg/train/loop.py": "from pkg.infer.sampler import sample\n",
        "pkg/infer/__init__.py": "",
        "pkg/infer/sampler.py": "def sample(): pass\n",
        "pkg/infer/scoring.py": "def f():\n    from pkg.train import loop\n",
    })
    assert file_cycles(imports) == []
    assert subpackage_cycles(imports, modules) == [
        "cycle among pkg.infer, pkg.train:",
        "    pkg/infer/scoring.py:2: pkg.infer.scoring -> pkg.train.loop (in a function)",
        "    pkg/train/loop.py:1: pkg.train.loop -> pkg.infer.sampler",
    ]


def test_layer_order_reports_upward_imports_and_modules_without_a_layer(tmp_path):
    modules, imports = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/errors.py": "",
        "pkg/data/__init__.py": "",
        "pkg/data/chat.py": "import pkg.errors\n",
        "pkg/data/examples.py": "from pkg.data import chat\n",
        "pkg/train.py": "from pkg.data.chat import x\n",
        "pkg/stray.py": "",
        "pkg/lower.py": "def f():\n    import pkg.train\n",
    })
    layers = (("pkg/errors", "pkg/lower"), ("pkg/data",), ("pkg/train", "pkg/__init__.py"))
    assert layer_of("pkg/data/chat.py", layers) == 1 and layer_of("pkg/data", layers) == 1
    assert layer_of("pkg/datasets.py", layers) is None  # a prefix of a name is not its package
    assert layer_violations(imports, modules, layers) == [
        "pkg/stray.py: pkg.stray is in no layer of ARCHITECTURE.md",
        "pkg/lower.py:2: pkg.lower -> pkg.train (in a function) points up: pkg/errors pkg/lower imports pkg/train pkg/__init__.py",
    ]


def _architecture_md() -> Path | None:
    # Beside the shared data (MAXLM_SHARED_DATA=.../shared/data), or ../shared/docs of the repo.
    env = os.environ.get("MAXLM_SHARED_DATA")
    for docs in ([Path(env).parent / "docs"] if env else []) + [REPO.parent / "shared" / "docs"]:
        if (docs / "ARCHITECTURE.md").is_file():
            return docs / "ARCHITECTURE.md"
    return None


def test_the_layer_table_is_architecture_mds_dependency_order():
    doc = _architecture_md()
    if doc is None:
        pytest.skip("ARCHITECTURE.md not found: set MAXLM_SHARED_DATA or place it at ../shared/docs")
    block = doc.read_text(encoding="utf-8").split("## Dependency order", 1)[1].split("```")[1]
    rows = [line for line in block.splitlines() if line.strip()]
    # Each row of the block names its layer's packages first, before any "(...)" comment.
    named = [re.sub(r"\([^)]*\)", " ", row).split() for row in rows]
    table = [[e.split("/")[-1].removesuffix(".py") for e in entries] for entries in LAYERS]
    for row, entries in zip(named, table, strict=True):
        assert set(entries) - {"__init__"} <= set(row), f"LAYERS row {entries} does not match ARCHITECTURE.md's row {row}"


# --- the real tree -----------------------------------------------------------------------------

MODULES = find_modules(REPO, ROOTS)
IMPORTS = find_imports(REPO, MODULES)


def test_the_real_tree_is_scanned():
    assert {"maxlm.cli", "maxlm.errors", "maxlm.data.chat", "data_pipelines"} <= set(MODULES)
    # A function-level import of the CLI, found as one.
    assert any(i.source == "maxlm.cli" and i.target == "maxlm.errors" and i.in_function for i in IMPORTS)
    assert ("maxlm.data.examples", "maxlm.data.chat") in _edges(IMPORTS)


def test_no_import_cycle_between_files():
    report = file_cycles(IMPORTS)
    assert not report, _report("import cycles between files", report)


def test_no_import_cycle_between_subpackages():
    report = subpackage_cycles(IMPORTS, MODULES)
    assert not report, _report("import cycles between sub-packages", report)


def test_imports_point_down_the_dependency_order():
    report = layer_violations(IMPORTS, MODULES, LAYERS)
    assert not report, _report("imports against ARCHITECTURE.md's dependency order", report)
