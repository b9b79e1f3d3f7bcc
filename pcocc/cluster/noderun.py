"""``pcocc internal run``: how the node process of one VM starts.

The node process gets the cluster's definition from its environment (``$PCOCC_CLUSTER_DEFINITION``,
set by the launcher for its node processes only, never for the user's command) and starts
QEMU before it first needs etcd: the etcd client's import, its login (and, for a node
started early, the wait for the job's private etcd) then overlap the guest's boot instead
of coming before it (see :meth:`pcocc.cluster.node.NodeProcess.run`). This module imports
no etcd client itself.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pcocc import timing
from pcocc.cluster.stored import ClusterDefinition, check_settings
from pcocc.errors import UsageError
from pcocc.kv.endpoints import ENDPOINTS_VAR

if TYPE_CHECKING:
    from pcocc.config import Config

DEFINITION_VAR = "PCOCC_CLUSTER_DEFINITION"


def encode_definition(definition: ClusterDefinition) -> str:
    return base64.b64encode(definition.to_json().encode()).decode()


def decode_definition(text: str, *, check: bool = True) -> ClusterDefinition:
    """The definition of ``$PCOCC_CLUSTER_DEFINITION``, parsed strictly, and with ``check``
    its settings checked against the configuration's schemas (see
    :func:`~pcocc.cluster.stored.check_settings`: jsonschema, a sixth of a second to load).

    :raise UsageError: naming the variable
    :raise Corrupt: a setting the configuration files could not give
    """
    try:
        raw = base64.b64decode(text.encode(), validate=True).decode()
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{DEFINITION_VAR} is not a pcocc cluster definition") from err
    definition = ClusterDefinition.from_json(raw)
    if check:
        check_settings(definition)
    return definition


def node_address(endpoints: str | None, env: Mapping[str, str]) -> str:
    """The address this node binds the VM's forwards on and publishes: the one it reaches
    etcd from (the other nodes reach etcd too), or ``$PCOCC_NODE_ADDRESS``. Without
    endpoints (a node started early, before the job's private etcd, which only happens on
    the launcher's host in local mode), the address that etcd will listen on there."""
    from pcocc.netaddr import ADDRESS_VAR, reachable_address

    if endpoints is None:
        from pcocc.kv.private import job_address

        return job_address((), env)  # local mode has no controller hosts
    return reachable_address(endpoints.split(","), env.get(ADDRESS_VAR))


def run_node(
    config: Config, rank: int | None, job_id: str | None, restore: str | None = None
) -> int:
    """``pcocc internal run``: the node process of one VM (restored from the checkpoint
    directory ``restore`` when given)."""
    timing.mark("node: imported, configuration loaded", started="node: process started")
    from pathlib import Path

    from pcocc.cluster import adapters, batchadapter, earlynodes
    from pcocc.cluster.lease import lease_ttl_s
    from pcocc.cluster.node import NodeProcess, NodeSettings
    from pcocc.kv import connect

    os.umask(0o077)  # the VM's run files, sockets and logs: for this user only
    rank = rank if rank is not None else batchadapter.task_rank(os.environ)
    if rank is None:
        raise UsageError("no VM rank: give --rank or run as a task of the launcher")
    batchid = job_id or os.environ.get("PCOCC_JOB_ID")
    if not batchid:
        raise UsageError("no cluster id: give --job or set PCOCC_JOB_ID")
    text = os.environ.get(DEFINITION_VAR)
    # the launcher checked this very text (see run_launcher); the environment is this
    # process's own, as trusted as its PYTHONPATH. Read from etcd, it is checked (node.py).
    definition = decode_definition(text, check=False) if text else None
    configured = connect.configured_endpoints(config.batch.etcd, os.environ)
    early = bool(os.environ.get(earlynodes.EARLY_VAR))
    if not configured and not early:
        raise UsageError(
            f"no etcd to use: {ENDPOINTS_VAR} is not set",
            hint="'pcocc internal run' is started by 'pcocc internal launcher'",
        )
    address = node_address(configured, os.environ)

    def open_kv() -> connect.EtcdKv:
        endpoints, _ = earlynodes.node_endpoints(config.batch.etcd, batchid)
        # the node processes share the launcher's stderr: their outage lines say who speaks
        kv = connect.open_kv(endpoints, config.batch.etcd, label=f"vm{rank}")
        timing.mark("node: etcd client ready (etcd3 imported, logged in)")
        return kv

    kv = connect.LazyKv(open_kv)
    try:
        node = NodeProcess(
            kv,
            NodeSettings(
                user=adapters.user_name(),
                batchid=batchid,
                rank=rank,
                lease_ttl_s=lease_ttl_s(os.environ),
                address=address,
                restore=Path(restore) if restore else None,
                definition_wait_s=earlynodes.AWAIT_TIMEOUT_S if early else 0.0,
                definition=definition,
            ),
            adapters.machine_factory(
                config, batchid, kv, address, restore=Path(restore) if restore else None
            ),
        )
        return node.run()
    finally:
        kv.close()
