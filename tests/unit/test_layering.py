"""Layering: no module of the library imports the command-line interface.

The CLI (``pcocc/cli/``) parses, calls the library and prints; the library takes plain
values (a ``Config``, a notify or progress callback) and never needs the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pcocc"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the code of ``module``) imports, at any depth of the
    code (functions and ``if TYPE_CHECKING:`` blocks included); ``from X import name``
    counts both ``X`` and ``X.name``, which may be a submodule."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


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
