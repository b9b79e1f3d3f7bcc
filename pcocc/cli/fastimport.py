"""``pcocc image import`` without click, and the body both parsers share.

Importing click and the command table costs ~40 ms of a VM image import whose floor is
``qemu-img convert`` and an fsync (benchmarks/image_import.py). :func:`fast_import`
recognises ``[GLOBAL] image import [-t FMT] [--description TEXT] SOURCE DEST`` before click
is imported and runs it; anything else (``--help``, another option, a global option set
from the environment, a missing or third operand) returns None and goes through click,
which reports errors. tests/unit/test_fastimport.py checks that both parsers agree.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from pcocc.cli.fastrun import _GLOBAL, _options, skip_exit_collection

if TYPE_CHECKING:
    from pcocc.cli.session import Session

#: environment variables click reads for global options: set, click parses the line
_ENV = ("PCOCC_INSECURE_OPTIONS", "PCOCC_TRUST_KEYS_FROM_HTTPS", "PCOCC_DIR")
#: options of ``pcocc image import`` known here: option -> (parameter, takes a value,
#: repeatable)
IMPORT = {
    "-t": ("fmt", True, False),
    "--type": ("fmt", True, False),
    "--description": ("description", True, False),
}


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(global options, import options)`` of ``pcocc [GLOBAL] image import [OPTS] SOURCE
    DEST``, with the names of the click parameters (``source`` and ``dest`` the operands);
    None when click must parse the line."""
    if any(os.environ.get(v) for v in _ENV):
        return None
    glob: dict[str, Any] = {}
    i = _options(argv, 0, _GLOBAL, glob)
    if i is None or argv[i:i + 2] != ["image", "import"]:
        return None
    opts: dict[str, Any] = {}
    j = _options(argv, i + 2, IMPORT, opts)
    if j is None or j != len(argv) - 2 or argv[j + 1].startswith("-"):
        return None
    opts["source"], opts["dest"] = argv[j:]
    return glob, opts


def run_import(session: Session, source: str, dest: str, fmt: str | None, description: str,
               tls_verify: bool | None = None, allow_backing_in_repo: bool = False) -> None:
    """``pcocc image import``, from the options of either parser."""
    from pcocc import timing
    from pcocc.cli.progress import progress_bar
    from pcocc.repo import ops
    from pcocc.repo.reposet import RepoSet

    timing.mark("import: command line parsed", started="import: process started")
    with progress_bar("importing", enabled=session.show_progress) as report:
        meta = ops.import_image(RepoSet(session.config.repos), source, dest, fmt=fmt,
                                description=description, progress=report,
                                tls_verify=tls_verify,
                                allow_backing_in_repo=allow_backing_in_repo)
    timing.mark("import: committed")
    if not session.quiet:
        sys.stderr.write(f"imported {meta.repo}:{meta.name}@{meta.revision} "
                         f"({meta.short_id})\n")
        sys.stderr.flush()


def fast_import(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a ``pcocc image import`` this module parses; its exit status
    (0), or None to let click handle the command line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, opts = parsed
    from pcocc.cli.session import click_free_session

    run_import(click_free_session(glob), opts["source"], opts["dest"], opts.get("fmt"),
               opts.get("description", ""))
    skip_exit_collection()  # committed: nothing is left open or unwritten
    return 0
