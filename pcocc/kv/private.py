"""A private etcd for one job, when no shared etcd is configured (``etcd: mode: private``).

The server lives in the job's run directory on free ports, and is stopped, with all its
processes, when the ``with`` block ends. It runs where the launcher runs, and the node
processes of the job connect to it: on one host 127.0.0.1 does, but the nodes of a
multi-host job need an address of this host that they reach. The launcher picks it with
:func:`job_address`: ``$PCOCC_NODE_ADDRESS`` if set, else the address this host uses to
reach the batch system's controller (every node of the job reaches the controller, so they
share a network with it; on a single host that is 127.0.0.1). etcd listens on that address
and on 127.0.0.1, and the endpoint it publishes is on that address.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pcocc.kv.client import ENDPOINTS_VAR
from pcocc.kv.server import LOOPBACK, EtcdServer
from pcocc.netaddr import ADDRESS_VAR, reachable_address


def job_address(controller_hosts: Sequence[str], env: Mapping[str, str]) -> str:
    """The address of this host that the nodes of the job reach (see the module doc).

    :raise ConfigError: ``$PCOCC_NODE_ADDRESS`` is not an IPv4 address
    """
    return reachable_address(controller_hosts, env.get(ADDRESS_VAR))


@contextlib.contextmanager
def private_etcd(run_dir: str | os.PathLike, address: str = LOOPBACK) -> Iterator[dict[str, str]]:
    """Run etcd in ``run_dir/etcd`` for the block, with its endpoint on ``address``; yield
    the environment that points at it.

    :raise ToolMissing: etcd is not installed
    :raise ServiceUnavailable: it did not start (the message names its log file)
    """
    with EtcdServer(Path(run_dir) / "etcd", address=address) as server:
        yield {ENDPOINTS_VAR: ",".join(server.endpoints)}
