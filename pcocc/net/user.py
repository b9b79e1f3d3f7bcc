"""User-mode networks (QEMU ``-netdev user``): NAT to the outside, and guest TCP ports forwarded
from a host address.

No privilege is needed. Each ``type: user`` network of a VM's resource set becomes one NIC.
A forward (``hostfwd``) listens on the node's reachable address (see
:mod:`pcocc.net.address`) on a host port picked when QEMU starts; the node process publishes
``address:port`` for each forwarded guest port (``rnat/<rank>/<guest port>`` in etcd).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SSH_PORT = 22


@dataclass(frozen=True)
class UserNet:
    """One user-mode NIC.

    :param id: QEMU netdev id (``net0``, ``net1``...)
    :param network: name of the network in networks.yaml ("" for the default NIC)
    :param cidr: guest subnet (``net=``); None keeps QEMU's 10.0.2.0/24
    :param forwards: guest TCP ports forwarded from the host; 22 first when it forwards ssh
    """

    id: str
    network: str = ""
    cidr: str | None = None
    forwards: tuple[int, ...] = (SSH_PORT,)

    @property
    def has_ssh(self) -> bool:
        return SSH_PORT in self.forwards


def default_net() -> UserNet:
    """The NIC of a VM whose resource set names no network: NAT plus the ssh forward."""
    return UserNet(id="net0")


def from_config(name: str, settings: Mapping[str, Any], index: int, *, ssh: bool) -> UserNet:
    """The NIC of ``type: user`` network ``name`` (its networks.yaml settings).

    :param index: position of the NIC in the VM (gives the netdev id)
    :param ssh: this network carries the VM's ssh forward (only one network does)
    """
    ports: list[int] = [SSH_PORT] if ssh else []
    for port in settings.get("forwards") or ():
        if int(port) not in ports:
            ports.append(int(port))
    return UserNet(
        id=f"net{index}", network=name, cidr=settings.get("cidr"), forwards=tuple(ports)
    )


def hostfwd_rules(net: UserNet, address: str, host_ports: Mapping[int, int]) -> list[str]:
    """``tcp:ADDRESS:HOSTPORT-:GUESTPORT`` for each forward that has a host port."""
    return [
        f"tcp:{address}:{host_ports[guest]}-:{guest}"
        for guest in net.forwards
        if guest in host_ports
    ]
