"""Console logs of failed clusters, kept after the cluster's run directory is gone.

When a VM fails or its QEMU dies, its node process copies the console log to
``<state dir>/failed-clusters/<batchid>/vmN-console.log`` (0600, in the user's private state
directory) and names that path in its record, so the launcher's error points at it and
``pcocc console --log -j JOBID vmN`` reads it after the end. Only the logs of the most
recent :data:`KEEP_CLUSTERS` failed clusters are kept: older ones are removed first.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pcocc import fields, paths
from pcocc.errors import NotFound, PcoccError

log = logging.getLogger(__name__)

#: how many failed clusters keep their console logs
KEEP_CLUSTERS = 10
#: the tail of a console log that is kept
MAX_KEPT_BYTES = 1 << 20


def kept_root() -> Path:
    return paths.state_dir() / "failed-clusters"


def kept_path(batchid: str, rank: int) -> Path:
    fields.job_id(batchid, "batch id")  # a path component: never '..' or a '/'
    return kept_root() / batchid / f"vm{int(rank)}-console.log"


def keep(batchid: str, rank: int, console_log: str | os.PathLike[str] | None) -> Path | None:
    """Copy the last MiB of ``console_log`` to the kept place; return it (None when there
    is no log, or it could not be kept: a warning says why)."""
    if not console_log:
        return None
    try:
        paths.state_dir(create=True)
        root = paths.private_dir(kept_root(), what="directory of kept console logs")
        dest = kept_path(batchid, rank)
        paths.private_dir(dest.parent, what="directory of kept console logs")
        fd = os.open(console_log, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as src:
            src.seek(max(0, os.fstat(src.fileno()).st_size - MAX_KEPT_BYTES))
            data = src.read(MAX_KEPT_BYTES)
        tmp = dest.with_name(dest.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
        _prune(root, keep_name=batchid)
        return dest
    except (OSError, ValueError, PcoccError) as err:
        log.warning("could not keep the console log of vm%d: %s", rank, err)
        return None


def _prune(root: Path, keep_name: str) -> None:
    """Remove the oldest clusters' logs beyond :data:`KEEP_CLUSTERS`."""
    entries = []
    for entry in root.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink():
                entries.append((entry.stat().st_mtime, entry))
        except OSError:
            continue
    entries.sort(reverse=True)
    for _, entry in entries[KEEP_CLUSTERS:]:
        if entry.name != keep_name:
            shutil.rmtree(entry, ignore_errors=True)


def read_kept(batchid: str, vm: str) -> str:
    """The kept console log of ``vm`` (``vmN``) of the ended cluster ``batchid``.

    :raise NotFound: nothing was kept for it
    """
    from pcocc.cluster.lookup import parse_vm_name

    path = kept_path(batchid, parse_vm_name(vm))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise NotFound(
            f"cluster {batchid} is not running and no console log of {vm} was kept",
            hint=f"the logs of the last {KEEP_CLUSTERS} failed clusters are kept in "
                 f"{kept_root()}",
        ) from None
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace")
