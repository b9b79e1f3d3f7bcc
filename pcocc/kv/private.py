"""A private etcd for one job, when no shared etcd is configured (``etcd: mode: private``).

The server lives in the job's run directory on free ports, and is stopped, with all its
processes, when the ``with`` block ends. It runs where the launcher runs, and the node
processes of the job connect to it: on one host 127.0.0.1 does, but the nodes of a
multi-host job need an address of this host that they reach. The launcher picks it with
:func:`job_address`: ``$PCOCC_NODE_ADDRESS`` if set, else the address this host uses to
reach the batch system's controller (every node of the job reaches the controller, so they
share a network with it; on a single host that is 127.0.0.1). etcd listens on that address
and on 127.0.0.1, and the endpoint it publishes is on that address.

It runs with authentication on (see :mod:`pcocc.kv.server`): the job's processes log in as
a job user whose role covers only the job owner's keys (``/pcocc/users/<user>/``), with a
random password that reaches them in ``$PCOCC_ETCD_JOB_LOGIN`` (the environment of a
process is readable by its owner only, unlike its argv) and that the launcher keeps in the
job's 0700 run directory for the user commands run later (``etcd-login``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pcocc.kv import keys
from pcocc.kv.credentials import JOB_LOGIN_VAR, format_job_login
from pcocc.kv.endpoints import ENDPOINTS_VAR
from pcocc.kv.server import LOOPBACK, EtcdServer, Grant
from pcocc.netaddr import ADDRESS_VAR, reachable_address


def job_address(controller_hosts: Sequence[str], env: Mapping[str, str]) -> str:
    """The address of this host that the nodes of the job reach (see the module doc).

    :raise ConfigError: ``$PCOCC_NODE_ADDRESS`` is not an IPv4 address
    """
    return reachable_address(controller_hosts, env.get(ADDRESS_VAR))


@contextlib.contextmanager
def private_etcd(
    run_dir: str | os.PathLike, user: str, address: str = LOOPBACK
) -> Iterator[dict[str, str]]:
    """Run etcd in ``run_dir/etcd`` for the block, with its endpoint on ``address`` and
    authentication on (the job user may use ``user``'s keys only); yield the environment
    that points at it and logs in to it.

    :raise ToolMissing: etcd is not installed
    :raise ServiceUnavailable: it did not start (the message names its log file)
    """
    grants = [Grant(keys.user_prefix(user))]
    with EtcdServer(Path(run_dir) / "etcd", address=address, auth=True, grants=grants) as server:
        assert server.login is not None
        yield {
            ENDPOINTS_VAR: ",".join(server.endpoints),
            JOB_LOGIN_VAR: format_job_login(server.login.user, server.login.password),
        }
