"""Layering: no module of the library imports the command-line interface, no pcocc
module or package takes part in an import cycle, and nobody outside pcocc/config reads
batch.yaml's etcd section as a mapping.

The CLI (``pcocc/cli/``) parses, calls the library and prints; the library takes plain
values (a ``Config``, a notify or progress callback) and never needs the CLI. Dependencies
point one way: a module that another one needs does not need it back, even through a
function-level import (those only hide a cycle until the function runs).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pcocc"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_statements(source: str, module: str, *, is_package: bool
                       ) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, base, names)`` for every import of ``source`` (the code of ``module``), at
    any depth of the code (functions and ``if TYPE_CHECKING:`` blocks included):
    ``import a.b`` gives ``("a.b", [])``, ``from .x import y, z`` the absolute base and
    ``["y", "z"]``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base, [alias.name for alias in node.names]


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the code of ``module``) imports; ``from X import name``
    counts both ``X`` and ``X.name``, which may be a submodule."""
    found: set[str] = set()
    for _line, base, names in _import_statements(source, module, is_package=is_package):
        found.add(base)
        found.update(f"{base}.{name}" for name in names)
    return found


def module_dependencies(source: str, module: str, known: set[str], *,
                        is_package: bool = False) -> dict[str, int]:
    """The modules of ``known`` that ``module`` needs, each with the line of its first import.

    ``from X import y`` needs ``X.y`` when that is a module of ``known`` (``X`` is then only
    its parent package, which every import of a submodule runs anyway), else ``X``."""
    deps: dict[str, int] = {}
    for line, base, names in _import_statements(source, module, is_package=is_package):
        targets = [base] if not names else [
            f"{base}.{n}" if f"{base}.{n}" in known else base for n in names]
        for target in targets:
            if target in known and target != module:
                deps.setdefault(target, line)
    return deps


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` for each group of nodes that reach each other (the
    strongly connected components of ``graph`` with more than one node)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: Mapping[str, Iterable[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first node back to itself, inside the group."""
    start = min(group)
    parent: dict[str, str] = {}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt in group and nxt not in parent:
                parent[nxt] = node
                todo.append(nxt)
    raise AssertionError(f"no cycle in {sorted(group)}")


def _is_cli(name: str) -> bool:
    return name == "pcocc.cli" or name.startswith("pcocc.cli.")


def library_modules() -> list[Path]:
    cli = PACKAGE / "cli"
    return sorted(p for p in PACKAGE.rglob("*.py") if cli not in p.parents)


def test_the_walk_sees_every_form_of_import():
    code = (
        "import pcocc.cli.main\n"
        "from pcocc import cli\n"
        "def f():\n    from pcocc.cli.context import Session\n"
        "from ..cli import output\n"
    )
    found = imported_modules(code, "pcocc.ctr.images")
    assert {"pcocc.cli.main", "pcocc.cli", "pcocc.cli.context", "pcocc.cli.output"} <= found
    assert not any(_is_cli(m) for m in imported_modules("from pcocc import client", "pcocc.x"))


def test_there_are_library_modules_to_check():
    names = {_module_name(p) for p in library_modules()}
    assert {"pcocc.ctr.images", "pcocc.ctr.multinode", "pcocc.repo.store"} <= names
    assert not any(_is_cli(n) for n in names)


@pytest.mark.parametrize("path", library_modules(), ids=_module_name)
def test_library_module_does_not_import_the_cli(path):
    module = _module_name(path)
    cli_imports = sorted(
        m for m in imported_modules(path.read_text(), module,
                                    is_package=path.name == "__init__.py")
        if _is_cli(m)
    )
    assert not cli_imports, (
        f"{path.relative_to(PACKAGE.parent)} imports {', '.join(cli_imports)}: the library "
        "must not depend on the CLI (take a Config and a notify/progress callback instead)"
    )


# --- import cycles --------------------------------------------------------------------------


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _import_graph() -> dict[str, dict[str, str]]:
    """module -> {module it needs: "file:line" of the import}, for every pcocc module."""
    modules = _all_modules()
    known = set(modules)
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        deps = module_dependencies(path.read_text(), name, known,
                                   is_package=path.name == "__init__.py")
        where = path.relative_to(PACKAGE.parent)
        graph[name] = {dep: f"{where}:{line}" for dep, line in deps.items()}
    return graph


def _package(module: str) -> str:
    """``pcocc.repo.store`` -> ``pcocc.repo``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def _describe(cycle: list[str], edges: Mapping[str, Mapping[str, str]]) -> str:
    steps = [f"{a} -> {b} ({edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "\n  cycle:\n    " + "\n    ".join(steps)


def test_the_dependencies_resolve_submodules_and_every_form_of_import():
    known = {"pcocc.vm", "pcocc.vm.qemu", "pcocc.vm.seed", "pcocc.repo.oci", "pcocc.errors"}
    code = (
        "from pcocc.vm import qemu, Machine\n"
        "def f():\n    from ..repo.oci import ingest_layout\n"
        "import pcocc.errors\n"
        "from . import seed\n"
        "import os\n"
    )
    deps = module_dependencies(code, "pcocc.vm.machine", known)
    assert deps == {"pcocc.vm.qemu": 1, "pcocc.vm": 1, "pcocc.repo.oci": 3,
                    "pcocc.errors": 4, "pcocc.vm.seed": 5}


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["a"]}
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": []}) == []


def test_no_import_cycle_between_pcocc_modules():
    graph = _import_graph()
    assert {"pcocc.repo.store", "pcocc.kv.private", "pcocc.config"} <= set(graph)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between pcocc modules (move the shared part down " \
        "into a module both can import):" + "".join(_describe(c, graph) for c in cycles)


def test_no_import_cycle_between_pcocc_packages():
    """``pcocc.kv`` and ``pcocc.net`` (say) must not need each other, whatever modules of
    theirs are involved: one package sits below the other."""
    edges: dict[str, dict[str, str]] = {}
    for module, deps in _import_graph().items():
        for dep, where in deps.items():
            a, b = _package(module), _package(dep)
            if a != b:
                edges.setdefault(a, {}).setdefault(b, f"{module} imports {dep}: {where}")
    cycles = find_cycles(edges)
    assert not cycles, "import cycles between pcocc packages:" + "".join(
        _describe(c, edges) for c in cycles)


# --- typed configuration --------------------------------------------------------------------

#: keys of batch.yaml's etcd section that only a reader of the raw mapping would look up
_ETCD_MAPPING_KEYS = {"etcd", "ca-cert", "password-file", "data-dir"}


def etcd_mapping_reads(source: str) -> list[int]:
    """Lines of ``source`` that read the etcd settings as a mapping: ``x.get("etcd")``,
    ``x["password-file"]`` and the like."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        key = None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and node.args):
            key = node.args[0]
        elif isinstance(node, ast.Subscript):
            key = node.slice
        if isinstance(key, ast.Constant) and key.value in _ETCD_MAPPING_KEYS:
            lines.append(node.lineno)
    return sorted(lines)


def test_the_etcd_read_finder_finds_each_form():
    code = 'a = c.batch.get("etcd") or {}\nb = a["password-file"]\nd = a.get("ca-cert", 1)\n'
    assert etcd_mapping_reads(code) == [1, 2, 3]
    assert etcd_mapping_reads('x = kv["key"]; y = etcd.password_file\n') == []


def test_the_etcd_settings_are_read_typed_only():
    """pcocc/config builds EtcdConfig from batch.yaml once; everyone else reads its fields
    (no dict view of it to fall back on, no module looking its keys up again)."""
    from pcocc.config import BatchConfig, EtcdConfig

    assert not hasattr(BatchConfig(), "get") and not hasattr(BatchConfig(), "__getitem__")
    assert not hasattr(EtcdConfig(), "as_dict") and not hasattr(EtcdConfig(), "get")
    config = PACKAGE / "config"
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py")) if config not in path.parents
        for line in etcd_mapping_reads(path.read_text())
    ]
    assert not found, f"etcd settings read as a mapping (use config.batch.etcd): {found}"


# -- file size ---------------------------------------------------------------------------
#: the project rule: no file in pcocc/ over this many lines (split it by concern instead)
MAX_LINES = 450


def oversized(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path: N lines`` of every .py file under ``root`` longer than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        count = len(path.read_text().splitlines())
        if count > limit:
            found.append(f"{path.relative_to(root.parent)}: {count} lines")
    return found


def test_the_size_check_names_each_long_file_and_its_count(tmp_path):
    pkg = tmp_path / "pcocc"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "short.py").write_text("x = 1\n" * 3)
    (pkg / "sub" / "long.py").write_text("x = 1\n" * 4)
    assert oversized(pkg, limit=3) == ["pcocc/sub/long.py: 4 lines"]


def test_no_pcocc_file_is_over_the_line_limit():
    assert oversized(PACKAGE) == [], f"split these by concern (limit {MAX_LINES} lines)"
