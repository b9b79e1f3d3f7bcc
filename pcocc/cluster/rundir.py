"""Per-user run directories of clusters and VMs (mode 0700; files in them 0600)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pcocc.errors import PermissionDenied


def run_root() -> Path:
    """``$XDG_RUNTIME_DIR/pcocc`` when that is a private dir of ours, else ``~/.pcocc/run``."""
    override = os.environ.get("PCOCC_RUN_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
            if st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0:
                return Path(xdg) / "pcocc"
        except OSError:
            pass
    return Path(os.path.expanduser("~")) / ".pcocc" / "run"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; refuse one owned by another user."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionDenied(f"run directory {path} belongs to another user")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


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
