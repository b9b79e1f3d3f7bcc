"""Node processes started while the launcher starts the job's private etcd.

A node process spends its first few hundred milliseconds importing pcocc and the gRPC
client; the launcher spends as long starting etcd and logging in. When the node processes
run on the launcher's host (local mode) and the job gets a private etcd, the launcher starts
them first: they load meanwhile, then find etcd through the job's run dir
(:func:`pcocc.kv.connect.await_private_etcd`, written once etcd holds its port) and wait for
the definition. Elsewhere (Slurm nodes do not share the launcher's run dir, a configured
etcd is up already) and with private networks (their switches start before the VMs) the
launcher starts them once etcd is up, as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pcocc.cluster import rundir
from pcocc.cluster.definition import ClusterDefinition
from pcocc.cluster.ports import Batch, TaskGroup
from pcocc.config.model import EtcdConfig
from pcocc.kv import connect
from pcocc.kv.endpoints import ENDPOINTS_VAR

#: how long an early node process waits for the private etcd, then for the definition
AWAIT_TIMEOUT_S = 60.0


def can_start_early(
    batch: Batch, definition: ClusterDefinition, etcd: EtcdConfig, env: Mapping[str, str]
) -> bool:
    """Whether the node processes may start before the job's etcd (see the module doc)."""
    on_this_host = getattr(batch, "name", None) == "local"
    private = connect.configured_endpoints(etcd, env) is None
    return on_this_host and private and not definition.networks


@contextlib.contextmanager
def early_tasks(
    batch: Batch,
    definition: ClusterDefinition,
    batchid: str,
    node_argv: Sequence[str],
    env: Mapping[str, str],
    run_dir: Path,
) -> Iterator[TaskGroup]:
    """Start the node processes of the cluster now; they wait for the etcd that the
    launcher writes into ``run_dir``. They are stopped when the block ends with them still
    running (the launcher's teardown stops them first when it got that far)."""
    for name in (connect.ENDPOINTS_FILE, connect.LOGIN_FILE):  # a dead launcher's
        (run_dir / name).unlink(missing_ok=True)
    task_env = {**env, "PCOCC_JOB_ID": batchid, connect.AWAIT_VAR: "1"}
    placement = {"one_per_node": True} if definition.full_node else {}
    tasks = batch.launch_tasks(batchid, definition.size, list(node_argv), task_env, **placement)
    try:
        yield tasks
    finally:
        if tasks.poll() is None:
            tasks.stop(timeout_s=15)


def node_endpoints(etcd: EtcdConfig, batchid: str) -> tuple[str | None, bool]:
    """A node process's etcd endpoints (None: none to use), and whether it is an early one:
    then it waited for the launcher's private etcd (loading the gRPC client meanwhile),
    took its login into ``os.environ``, and the definition may not be published yet.

    :raise ServiceUnavailable: the launcher did not start its etcd in time
    """
    endpoints = connect.configured_endpoints(etcd, os.environ)
    if endpoints or not os.environ.get(connect.AWAIT_VAR):
        return endpoints, False
    import pcocc.kv.client  # noqa: F401  (the slowest import: done while etcd starts)

    found = connect.await_private_etcd(rundir.cluster_dir(batchid), AWAIT_TIMEOUT_S)
    os.environ.update(found)
    return found[ENDPOINTS_VAR], True
