"""The address of this node that the other nodes of a cluster can reach.

A node process publishes ``host:port`` pairs (ssh forwards, switch ports) for processes on
other nodes. Binding them on 127.0.0.1 works only on a single host, and the host name may
resolve to an address that other nodes do not route to. The address this node uses to reach
the cluster's coordination service (etcd) is one that the other nodes, which reach the same
service, can use too: the kernel picks it from its routing table when a UDP socket is
connected (no packet is sent).

A top-level module: the etcd side (:mod:`pcocc.kv`) and the network side (:mod:`pcocc.net`,
which uses :mod:`pcocc.kv`) both need it, so it may belong to neither.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from pcocc.errors import ConfigError

#: Environment override: the address to publish and bind (e.g. one NIC of several).
ADDRESS_VAR = "PCOCC_NODE_ADDRESS"
LOOPBACK = "127.0.0.1"


def _host_port(endpoint: str) -> tuple[str, int]:
    """``http://h:p``, ``h:p`` or ``h`` -> (h, p); the port defaults to etcd's 2379."""
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"//{text}")
    if not parts.hostname:
        raise ConfigError(f"etcd endpoint {endpoint!r} has no host name")
    return parts.hostname, parts.port or 2379


def is_loopback_host(host: str) -> bool:
    """``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic to it
    never leaves this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def route_source(host: str, port: int) -> str:
    """The local IPv4 address the kernel would use to send to ``host:port``."""
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(infos[0][4])
        return s.getsockname()[0]


def reachable_address(peers: Iterable[str], override: str | None = None) -> str:
    """The address of this node that reaches the first resolvable peer (``host:port`` or
    URL); ``override`` (an IPv4 address) wins; 127.0.0.1 when no peer resolves."""
    if override:
        try:
            return str(ipaddress.IPv4Address(override.strip()))
        except ValueError:
            raise ConfigError(
                f"{ADDRESS_VAR}={override!r} is not an IPv4 address",
                hint="set it to the address of this node that other nodes reach",
            ) from None
    for peer in peers:
        try:
            return route_source(*_host_port(peer))
        except OSError:
            continue
    return LOOPBACK
