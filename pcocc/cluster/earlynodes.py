"""Node processes started before the launcher has its etcd client.

A node process spends its first few hundred milliseconds importing pcocc and the gRPC
client (and on Slurm, srun takes as long to start it); the launcher spends as long loading
its own client, logging in (and starting the job's private etcd). So the launcher starts the
node processes first, and they wait for the definition it publishes:

- with a configured etcd (up already), on any batch system: they use it as before;
- with the job's private etcd, only when they run on the launcher's host (local mode): they
  load their client meanwhile, then find etcd through the job's 0700 run dir
  (:func:`pcocc.kv.connect.await_private_etcd`), written once etcd holds its port, so no
  password is sent before etcd owns the port. Slurm nodes do not share that run dir: they
  start once etcd is up, its endpoint and login in their environment, as before.

With private networks, whose switches start before the VMs, they start after etcd too.
"""

from __future__ import annotations

import contextlib
import importlib
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
#: set for the node processes started early
EARLY_VAR = "PCOCC_EARLY_NODE"


def can_start_early(
    batch: Batch, definition: ClusterDefinition, etcd: EtcdConfig, env: Mapping[str, str]
) -> bool:
    """Whether the node processes may start before the job's etcd (see the module doc)."""
    if definition.networks:
        return False
    configured = connect.configured_endpoints(etcd, env) is not None
    return configured or getattr(batch, "name", None) == "local"


@contextlib.contextmanager
def early_tasks(
    batch: Batch,
    definition: ClusterDefinition,
    batchid: str,
    node_argv: Sequence[str],
    env: Mapping[str, str],
    run_dir: Path,
) -> Iterator[TaskGroup]:
    """Start the node processes of the cluster now; they wait for the definition (and for
    a private etcd, for the files the launcher writes into ``run_dir``). They are stopped
    when the block ends with them still running (the launcher's teardown stops them first
    when it got that far)."""
    for name in (connect.ENDPOINTS_FILE, connect.LOGIN_FILE):  # a dead launcher's
        (run_dir / name).unlink(missing_ok=True)
    task_env = {**env, "PCOCC_JOB_ID": batchid, EARLY_VAR: "1"}
    placement = {"one_per_node": True} if definition.full_node else {}
    tasks = batch.launch_tasks(batchid, definition.size, list(node_argv), task_env, **placement)
    try:
        yield tasks
    finally:
        if tasks.poll() is None:
            tasks.stop(timeout_s=15)


def node_endpoints(etcd: EtcdConfig, batchid: str) -> tuple[str | None, bool]:
    """A node process's etcd endpoints (None: none to use), and whether it started early
    (then the definition may not be published yet). An early one without a configured etcd
    waits for the launcher's private etcd (loading the gRPC client meanwhile) and takes its
    login into ``os.environ``.

    :raise ServiceUnavailable: the launcher did not start its etcd in time
    """
    endpoints = connect.configured_endpoints(etcd, os.environ)
    early = bool(os.environ.get(EARLY_VAR))
    if endpoints or not early:
        return endpoints, early
    importlib.import_module("pcocc.kv.client")  # the slowest import: while etcd starts

    found = connect.await_private_etcd(rundir.cluster_dir(batchid), AWAIT_TIMEOUT_S)
    os.environ.update(found)
    return found[ENDPOINTS_VAR], True
