"""The quick path of ``pcocc ssh [USER@]vmN [COMMAND...]`` in a cluster's own job.

In the ``-E`` command or the shell of ``pcocc alloc``/``batch``, ``$PCOCC_JOB_ID`` names the
cluster, and the launcher wrote its ssh_config and known_hosts into the cluster's run
directory on this host once every VM ran (:func:`pcocc.cluster.sshkeys.prepare_ssh_files`):
the files ``pcocc ssh`` writes from the records in etcd. This path runs ssh on them at once:
no click, no configuration, no etcd lookup (a third of a second, issue 18), and ssh
replaces this process. Anything else goes the usual way (:func:`fast_ssh` returns None):
options, no ``$PCOCC_JOB_ID``, files missing, not private, or without that VM.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping

#: ``[USER@]vmN``; the user name as the usual path accepts it (ssh refuses odd ones)
_TARGET = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?(vm[0-9]+)")
_JOB_ID = re.compile(r"[0-9]+")


def _own_private_file(path: str) -> bool:
    """A regular file of ours (no link) that nobody else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def ready_config(name: str, env: Mapping[str, str]) -> str | None:
    """The ssh_config the launcher prepared for VM ``name`` of cluster ``$PCOCC_JOB_ID``,
    if it is there, ours, in private directories, and names that VM; else None."""
    from pcocc import paths

    job = env.get("PCOCC_JOB_ID", "")
    if not _JOB_ID.fullmatch(job):
        return None
    root = paths.run_root()
    directory = root / job
    if not (paths.is_private_dir(root) and paths.is_private_dir(directory)):
        return None
    config = str(directory / "ssh_config")
    if not (_own_private_file(config) and _own_private_file(str(directory / "known_hosts"))):
        return None
    with open(config, encoding="utf-8", errors="replace") as f:
        if f"Host {name}\n" not in f.read():
            return None  # not running when the launcher wrote it: the usual path says why
    return config


def fast_ssh(argv: list[str]) -> int | None:
    """Run ``pcocc ssh TARGET [COMMAND...]`` (no option) with the prepared files; None when
    this path does not apply. Returns only if ssh cannot be started."""
    if len(argv) < 2 or argv[0] != "ssh" or "--" in argv:
        return None
    match = _TARGET.fullmatch(argv[1])
    if match is None:
        return None
    config = ready_config(match.group(1), os.environ)
    if config is None:
        return None
    from pcocc import proc

    proc.replace_process(["ssh", "-F", config, argv[1], *argv[2:]])
    return None  # not reached
