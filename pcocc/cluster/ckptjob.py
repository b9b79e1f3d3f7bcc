"""What ``pcocc ckpt`` does: find the user's cluster and a writable client of its etcd,
then checkpoint it (see :mod:`pcocc.cluster.checkpoint`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pcocc.cluster import adapters, checkpoint, ckptdir, rundir
from pcocc.cluster.access import find_cluster
from pcocc.cluster.state import ClusterState
from pcocc.errors import UsageError
from pcocc.kv import connect


def checkpoint_job(
    job_id: str | None,
    dest: str,
    *,
    force: bool,
    stop: bool,
    etcd: connect.EtcdSource,
    report: Callable[[str], None] = lambda msg: None,
) -> Path:
    """``pcocc ckpt``: checkpoint the user's cluster (``-j JOBID``, or as the other user
    commands find it) into ``dest``; return the checkpoint's absolute path."""
    path = Path(os.path.abspath(dest))
    ckptdir.check_destination(path, force)  # before anything else: nothing to undo
    view = find_cluster(job_id, etcd=etcd)
    if view.record.state is not ClusterState.RUNNING:
        raise UsageError(f"cluster {view.batchid} is {view.record.state.value}, not running",
                         hint="checkpoint it once 'pcocc ps' shows it running")
    checkpoint.check_checkpointable(view.record.definition)
    user = adapters.user_name()
    kv = connect.open_cluster_writer(os.environ, rundir.run_root(), etcd, user, view.batchid)
    try:
        return checkpoint.checkpoint_cluster(kv, user, view.batchid, view.record.definition, path,
                                              force=force, stop=stop, report=report)
    finally:
        kv.close()
