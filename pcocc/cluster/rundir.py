"""Per-user run directories of clusters and VMs (mode 0700; files in them 0600)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from pcocc import paths
from pcocc.errors import Corrupt, NotFound


def run_root() -> Path:
    """Where the cluster run directories are (policy in :mod:`pcocc.paths`)."""
    return paths.run_root()


def run_roots() -> list[Path]:
    """The run root of this environment first, then the others a process of this user may
    have used on this host (:func:`pcocc.paths.run_roots`)."""
    return paths.run_roots()


def vm_run_file(path: str, batchid: str, rank: int, *, socket: bool) -> str:
    """``path``, a socket or log file that the state record of VM ``rank`` names, once
    checked to be one of ours inside that VM's run dir on this host (never a path anywhere
    else that a record could name): no symbolic link, owned by us, a unix socket
    (``socket``) or a regular file.

    :raise Corrupt: the path lies elsewhere or is not such a file
    :raise NotFound: the file does not exist (any more)
    """
    what = "socket" if socket else "file"
    norm = os.path.normpath(path)
    inside = [
        d for d in (root / batchid / f"vm{rank}" for root in run_roots())
        if norm == path and path.startswith(f"{d}/")
        and f"{os.path.realpath(os.path.dirname(path))}/".startswith(f"{os.path.realpath(d)}/")
    ]
    if not inside:
        raise Corrupt(
            f"the state record of vm{rank} names {path!r}, which is not in its run directory"
            f" ({run_roots()[0] / batchid / f'vm{rank}'})",
            hint="the record was not written by pcocc; if the VM runs with another"
            " PCOCC_RUN_DIR, set it here too",
        )
    try:
        st = os.lstat(path)
    except OSError as err:
        raise NotFound(f"cannot use {path}: {err.strerror}") from err
    kind_ok = stat.S_ISSOCK(st.st_mode) if socket else stat.S_ISREG(st.st_mode)
    if not kind_ok or st.st_uid != os.getuid():
        raise Corrupt(f"{path} is not a {what} of yours: refusing to use it")
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700 or check it (:func:`pcocc.paths.private_dir`)."""
    return paths.private_dir(path, what="run directory")


def cluster_dir(batchid: str, *, create: bool = True) -> Path:
    path = run_root() / batchid
    if create:
        private_dir(run_root())
        private_dir(path)
    return path


def vm_dir(batchid: str, rank: int) -> Path:
    return private_dir(cluster_dir(batchid) / f"vm{rank}")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_empty_parents(path: Path) -> None:
    """Remove the cluster dir and the run root above ``path`` if they are empty now."""
    for parent in (path.parent, path.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            return


def remove_cluster_dir(batchid: str) -> None:
    """Remove the cluster's run dir, and the run root if that leaves it empty."""
    path = cluster_dir(batchid, create=False)
    remove_tree(path)
    try:
        path.parent.rmdir()
    except OSError:
        pass
