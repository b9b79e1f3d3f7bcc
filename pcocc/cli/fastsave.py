"""``pcocc save`` without click, and the body both parsers share.

A save of a small layer takes a fraction of a second, of which importing click and the
command table was a large part. :func:`fast_save` recognises ``[GLOBAL] save [OPTS] [vmN]``
with the options below before click is imported and runs it; anything else (``--help``, an
option not known here, ``--user``, a second operand) returns None and goes through click,
which reports errors. tests/unit/test_fastsave.py checks that both parsers agree.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from pcocc.cli.fastrun import _GLOBAL, _options, skip_exit_collection

if TYPE_CHECKING:
    from pcocc.cli.session import Session
    from pcocc.cluster.lookup import ClusterSelection

#: options of ``pcocc save``: option -> (parameter, takes a value, repeatable)
SAVE = {
    "-j": ("job_id", True, False),
    "--jobid": ("job_id", True, False),
    "-J": ("job_name", True, False),
    "--jobname": ("job_name", True, False),
    "-d": ("dest", True, False),
    "--dest": ("dest", True, False),
    "--full": ("full", False, False),
    "-s": ("skip_freeze", False, False),
    "--no-freeze": ("skip_freeze", False, False),
}


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(global options, save options)`` of ``pcocc [GLOBAL] save [OPTS] [vmN]``, with the
    names of the click parameters (``vm`` the operand, vm0 by default); None when click
    must parse the line."""
    glob: dict[str, Any] = {}
    i = _options(argv, 0, _GLOBAL, glob)
    if i is None or argv[i:i + 1] != ["save"]:
        return None
    opts: dict[str, Any] = {}
    j = _options(argv, i + 1, SAVE, opts)
    if j is None or j < len(argv) - 1:
        return None
    opts["vm"] = argv[j] if j < len(argv) else "vm0"
    return glob, opts


def run_save(session: Session, selection: ClusterSelection, dest: str | None, full: bool,
             skip_freeze: bool, vm: str) -> None:
    """``pcocc save``, from the options of either parser: prints the saved revision."""
    from pcocc import timing
    from pcocc.cli.progress import progress_bar
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.save import save_vm
    from pcocc.repo.reposet import RepoSet

    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    timing.mark("save: cluster found", started="save: process started")
    with progress_bar("saving", enabled=session.show_progress) as report:
        meta = save_vm(view, vm, RepoSet(session.config.repos), dest=dest, full=full,
                       skip_freeze=skip_freeze, progress=report, notify=session.notify)
    sys.stdout.write(meta.ref + "\n")
    sys.stdout.flush()


def fast_save(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a ``pcocc save`` this module parses; its exit status (0), or
    None to let click handle the command line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, opts = parsed
    from pcocc.cli.session import click_free_session
    from pcocc.cluster.lookup import ClusterSelection

    session = click_free_session(glob)
    run_save(session, ClusterSelection(opts.get("job_id"), opts.get("job_name")),
             opts.get("dest"), opts.get("full", False), opts.get("skip_freeze", False),
             opts["vm"])
    skip_exit_collection()  # everything is closed and committed
    return 0
