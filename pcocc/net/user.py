"""User-mode networks (QEMU ``-netdev user``): NAT to the outside, and guest TCP ports
reachable from the host.

No privilege is needed. Each ``type: user`` network of a VM's resource set becomes one NIC.
A guest port is reached in one of two ways:

- **listening forwards** (``hostfwd``): the ssh port and the network's ``public-forwards``.
  QEMU listens on the node's reachable address (see :mod:`pcocc.netaddr`) on a host port
  picked when it starts; the node process publishes ``address:port`` for each of them
  (``rnat/<rank>/<guest port>`` in etcd). Anyone who can reach the node can connect: ssh is
  protected by the user's key, a public forward by nothing but the guest's own service.
- **private forwards** (the network's ``forwards``): nothing listens on the host. QEMU 7.2's
  hostfwd can only listen on a TCP or UDP address, and every local user can connect to any
  TCP address of the node (loopback included), so a private port gets no listener at all:
  ``pcocc nc`` reaches it through the VM's ssh server (``ssh -W``), which the user's key
  protects, from any node. A VM with private forwards therefore needs the ssh forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SSH_PORT = 22
#: Where a private forward is reached inside the guest (through its ssh server).
PRIVATE_TARGET = "127.0.0.1"


@dataclass(frozen=True)
class UserNet:
    """One user-mode NIC.

    :param id: QEMU netdev id (``net0``, ``net1``...)
    :param network: name of the network in networks.yaml ("" for the default NIC)
    :param cidr: guest subnet (``net=``); None keeps QEMU's 10.0.2.0/24
    :param forwards: guest TCP ports QEMU listens for on the host (ssh first when this NIC
        forwards it, then the public forwards)
    :param private: guest TCP ports reached through the VM's ssh server only (no listener)
    """

    id: str
    network: str = ""
    cidr: str | None = None
    forwards: tuple[int, ...] = (SSH_PORT,)
    private: tuple[int, ...] = ()

    @property
    def has_ssh(self) -> bool:
        return SSH_PORT in self.forwards

    @property
    def ports(self) -> tuple[int, ...]:
        """Every guest port of this NIC that ``pcocc nc`` reaches, listening ones first."""
        return self.forwards + self.private


def default_net() -> UserNet:
    """The NIC of a VM whose resource set names no network: NAT plus the ssh forward."""
    return UserNet(id="net0")


def _ports(values: Any) -> list[int]:
    """A networks.yaml port list, without repeats, in order."""
    ports: list[int] = []
    for value in values or ():
        if int(value) not in ports:
            ports.append(int(value))
    return ports


def from_config(name: str, settings: Mapping[str, Any], index: int, *, ssh: bool) -> UserNet:
    """The NIC of ``type: user`` network ``name`` (its networks.yaml settings).

    A port in both ``forwards`` and ``public-forwards`` is public; port 22 always listens
    (it is the ssh port, protected by the user's key), wherever it is listed.

    :param index: position of the NIC in the VM (gives the netdev id)
    :param ssh: this network carries the VM's ssh forward (only one network does)
    """
    private = _ports(settings.get("forwards"))
    listening: list[int] = [SSH_PORT] if ssh or SSH_PORT in private else []
    for port in _ports(settings.get("public-forwards")):
        if port not in listening:
            listening.append(port)
    private = [p for p in private if p not in listening]
    return UserNet(
        id=f"net{index}",
        network=name,
        cidr=settings.get("cidr"),
        forwards=tuple(listening),
        private=tuple(private),
    )


def hostfwd_rules(net: UserNet, address: str, host_ports: Mapping[int, int]) -> list[str]:
    """``tcp:ADDRESS:HOSTPORT-:GUESTPORT`` for each listening forward that has a host port
    (private forwards never get one)."""
    return [
        f"tcp:{address}:{host_ports[guest]}-:{guest}"
        for guest in net.forwards
        if guest in host_ports
    ]
