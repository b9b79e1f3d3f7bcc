"""``type: private`` networks: an unprivileged layer-2 network between the VMs of a cluster.

Pieces, in the order a cluster uses them:

- :func:`cluster_networks` (definition time): the private networks of the cluster's VMs,
  checked (cidr, room for every VM), stored in the cluster definition; VM rank N gets host
  address N+1 of the cidr, which also feeds the VMs' /etc/hosts.
- :func:`start_switches` / :func:`stop_switches` (launcher): one ``pcocc internal vswitch``
  process per network, which binds a UDP socket on the node's reachable address and
  publishes it in etcd (:func:`run_switch`).
- :func:`prepare_nics` (node process, before QEMU starts): waits for each switch, opens a
  UDP socket connected to it (handed to QEMU), and returns the QEMU ``-netdev dgram``
  arguments and the etcd records that register the NIC with its switch (published under
  the node's lease).
- :func:`network_config` and :func:`seed_table`: the guest side (NoCloud ``network-config``
  for cloud-init images, and a plain ``MAC ADDRESS/PREFIX MTU`` table for small images).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pcocc import fields, proc
from pcocc.errors import ConfigError, PcoccError, ServiceUnavailable, TimedOut, UsageError
from pcocc.kv import keys
from pcocc.kv.endpoints import ENDPOINTS_VAR

log = logging.getLogger(__name__)

TYPE = "private"
DEFAULT_CIDR = "10.252.0.0/16"
#: 1500 minus the IPv4 and UDP headers and the frame's own Ethernet header, rounded down:
#: a full frame then fits in one unfragmented datagram on a 1500-byte host network.
DEFAULT_MTU = 1450
#: How long a node waits for the switch of its network to be published.
SWITCH_WAIT_S = 60.0
#: The QEMU NIC of the first network without an explicit MAC (user networks) gets this one.
QEMU_DEFAULT_MAC = "52:54:00:12:34:56"
ADDRESS_HINT = "PCOCC_NODE_ADDRESS to the address of this node that the other nodes reach"
#: Seed file read by small images without cloud-init (``MAC ADDRESS/PREFIX MTU`` lines).
SEED_TABLE = "pcocc/net"


@dataclass(frozen=True)
class PrivateNet:
    name: str
    cidr: str
    mtu: int = DEFAULT_MTU

    @classmethod
    def from_config(cls, name: str, conf: Mapping[str, Any]) -> PrivateNet:
        """Check a ``networks.yaml`` entry of type private.

        :raise ConfigError: the cidr is not an IPv4 network or has no room for hosts
        """
        cidr = str(conf.get("cidr") or DEFAULT_CIDR)
        try:
            net = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as err:
            raise ConfigError(
                f"network '{name}': cidr '{cidr}' is not an IPv4 network ({err})",
                hint="give the network address and prefix length, e.g. 10.252.0.0/16",
            ) from None
        if net.num_addresses < 4:
            raise ConfigError(
                f"network '{name}': cidr '{cidr}' has no room for VMs",
                hint="use a prefix length of 30 or less",
            )
        mtu = int(conf.get("mtu") or DEFAULT_MTU)
        return cls(name, str(net), mtu)

    @property
    def capacity(self) -> int:
        """How many VMs fit (every address but the network and broadcast ones)."""
        return ipaddress.IPv4Network(self.cidr).num_addresses - 2

    def interface(self, rank: int) -> str:
        """``address/prefix`` of VM ``rank`` (host number rank + 1)."""
        if not 0 <= rank < self.capacity:
            raise UsageError(
                f"network '{self.name}' ({self.cidr}) has room for {self.capacity} VMs,"
                f" not {rank + 1}",
                hint="use a larger cidr for this network in networks.yaml",
            )
        net = ipaddress.IPv4Network(self.cidr)
        return f"{net.network_address + rank + 1}/{net.prefixlen}"

    def address(self, rank: int) -> str:
        return self.interface(rank).split("/")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"type": TYPE, "cidr": self.cidr, "mtu": self.mtu}



def default_macs(count: int) -> list[str]:
    """The MACs QEMU gives the first ``count`` NICs created without one: it counts up from
    52:54:00:12:34:56 in the order of the command line."""
    base = QEMU_DEFAULT_MAC.rsplit(":", 1)
    return [f"{base[0]}:{int(base[1], 16) + i:02x}" for i in range(count)]

def is_private(conf: Mapping[str, Any] | None) -> bool:
    return bool(conf) and conf.get("type") == TYPE


def cluster_networks(
    vm_networks: Sequence[Sequence[str]], networks_conf: Mapping[str, Mapping[str, Any]]
) -> dict[str, PrivateNet]:
    """The private networks that the VMs use, in order of first use, each checked to have
    room for every VM of the cluster.

    :param vm_networks: the network names of each VM (its resource set's ``networks``)
    :raise ConfigError: a bad cidr
    :raise UsageError: too many VMs for a network's cidr
    """
    result: dict[str, PrivateNet] = {}
    for names in vm_networks:
        for name in names:
            conf = networks_conf.get(name)
            if name not in result and is_private(conf):
                result[name] = PrivateNet.from_config(name, conf or {})
    for net in result.values():
        if len(vm_networks) > net.capacity:
            raise UsageError(
                f"network '{net.name}' ({net.cidr}) has room for {net.capacity} VMs,"
                f" not {len(vm_networks)}",
                hint="use a larger cidr for this network in networks.yaml",
            )
    return result


def from_definition(stored: Mapping[str, Mapping[str, Any]]) -> dict[str, PrivateNet]:
    """The private networks stored in a cluster definition (``networks``)."""
    return {
        name: PrivateNet(name, str(conf["cidr"]), int(conf.get("mtu") or DEFAULT_MTU))
        for name, conf in stored.items()
        if is_private(conf)
    }


def mac_address(batchid: str, net_index: int, rank: int) -> str:
    """A locally administered unicast MAC, unique within the cluster (index and rank are in
    it) and stable across runs of the same cluster id."""
    if not 0 <= net_index < 256 or not 0 <= rank < 1 << 24:
        raise UsageError(f"no MAC address for network {net_index} of vm{rank}")
    tag = hashlib.sha256(f"pcocc/{batchid}".encode()).digest()[0]
    raw = bytes([0x02, tag, net_index]) + rank.to_bytes(3, "big")
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class Nic:
    """One VM NIC on a private network."""

    net: str
    mac: str
    interface: str  # address/prefix
    mtu: int


def vm_nics(
    nets: Mapping[str, PrivateNet], vm_networks: Sequence[str], batchid: str, rank: int
) -> list[Nic]:
    """The NICs of VM ``rank`` on the private networks among ``vm_networks``."""
    order = list(nets)
    return [
        Nic(
            name,
            mac_address(batchid, order.index(name), rank),
            nets[name].interface(rank),
            nets[name].mtu,
        )
        for name in vm_networks
        if name in nets
    ]


# -- guest configuration ------------------------------------------------------------------
def network_config(nics: Sequence[Nic], dhcp_macs: Sequence[str] = ()) -> str:
    """A NoCloud ``network-config`` (version 2) matching the NICs by MAC.

    A network-config replaces cloud-init's fallback (DHCP on the first NIC), so the other
    NICs (user networks, by ``dhcp_macs``) are listed with DHCP.
    """
    ethernets: dict[str, Any] = {}
    for i, mac in enumerate(dhcp_macs):
        ethernets[f"nat{i}"] = {"match": {"macaddress": mac}, "dhcp4": True}
    for i, nic in enumerate(nics):
        ethernets[f"priv{i}"] = {
            "match": {"macaddress": nic.mac},
            "addresses": [nic.interface],
            "mtu": nic.mtu,
            "dhcp4": False,
        }
    import yaml  # only here: alloc and the launcher reach this module (issue 18)

    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)


def seed_table(nics: Sequence[Nic]) -> str:
    """``MAC ADDRESS/PREFIX MTU`` lines, for images whose init is a shell script."""
    return "".join(f"{nic.mac} {nic.interface} {nic.mtu}\n" for nic in nics)


def seed_files(nics: Sequence[Nic], dhcp_macs: Sequence[str] = ()) -> dict[str, str]:
    """Files to add to the VM's seed (empty without private NICs)."""
    if not nics:
        return {}
    return {"network-config": network_config(nics, dhcp_macs), SEED_TABLE: seed_table(nics)}


# -- node side ------------------------------------------------------------------------------
def parse_switch_record(text: str | bytes, key: str | None = None) -> tuple[str, int]:
    """The value of a ``nets/<net>/switch`` key: ``ADDRESS:PORT`` of the network's switch
    (an IPv4 address, as :func:`run_switch` publishes it).

    :raise Corrupt: naming the key
    """

    def parse(raw: str | bytes) -> tuple[str, int]:
        try:
            value = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeError:
            raise fields.BadField("(value)", "not UTF-8 text") from None
        host, port = fields.host_port(value, "(value)")
        return fields.ipv4_address(host, "(value)"), port

    return fields.parse_record("switch record", key, text, parse)


@dataclass(frozen=True)
class NicSetup:
    """What the node process needs for the private NICs of its VM."""

    qemu_args: tuple[str, ...]
    #: etcd key -> value, published under the node's lease before QEMU starts
    kv_entries: dict[str, str]
    nics: tuple[Nic, ...]
    #: the NICs' UDP sockets, handed to QEMU; the node process keeps them open while it runs
    sockets: tuple[socket.socket, ...] = ()

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self.sockets)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def connected_socket(local_host: str, remote: tuple[str, int]) -> socket.socket:
    """A UDP socket bound on a free port of ``local_host`` and connected to ``remote``: the
    kernel then delivers to it only the datagrams that come from ``remote`` (the switch)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((local_host, 0))
        sock.connect(remote)
    except BaseException:
        sock.close()
        raise
    return sock


def netdev_args(index: int, nic: Nic, fd: int, nic_model: str) -> list[str]:
    """``-netdev dgram`` (QEMU >= 7.2) on an open, connected UDP socket ``fd``, and its NIC
    with the fixed MAC. (With ``local.type=inet`` QEMU would not connect its socket and
    would take frames from any sender.)"""
    netdev = f"dgram,id=priv{index},local.type=fd,local.str={fd}"
    return ["-netdev", netdev, "-device", f"{nic_model},netdev=priv{index},mac={nic.mac}"]


def prepare_nics(
    kv: Any,
    user: str,
    batchid: str,
    nets: Mapping[str, PrivateNet],
    vm_networks: Sequence[str],
    rank: int,
    node_address: str,
    nic_model: str = "virtio-net-pci",
    timeout_s: float = SWITCH_WAIT_S,
) -> NicSetup:
    """Wait for the switches of the VM's private networks; open the NICs' sockets.

    :raise ServiceUnavailable: a switch was not published in time
    """
    args: list[str] = []
    entries: dict[str, str] = {}
    sockets: list[socket.socket] = []
    nics = vm_nics(nets, vm_networks, batchid, rank)
    try:
        for index, nic in enumerate(nics):
            key = keys.net_switch(user, batchid, nic.net)
            try:
                text = kv.wait_for(key, lambda snap, k=key: snap.get(k), timeout_s)
            except TimedOut:
                raise ServiceUnavailable(
                    f"vm{rank}: the switch of network '{nic.net}' did not start in {timeout_s:g} s",
                    hint="check the launcher's messages",
                ) from None
            remote = parse_switch_record(text, key)
            try:
                sock = connected_socket(node_address, remote)
            except OSError as err:
                raise PcoccError(
                    f"vm{rank}: cannot open a port on {node_address} to the switch of network"
                    f" '{nic.net}' at {text}: {err.strerror or err}",
                    hint=f"set {ADDRESS_HINT}",
                ) from err
            sockets.append(sock)
            host, port = sock.getsockname()[:2]
            args += netdev_args(index, nic, sock.fileno(), nic_model)
            entries[keys.net_port(user, batchid, nic.net, rank)] = json.dumps(
                {"host": host, "port": port, "mac": nic.mac}
            )
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return NicSetup(tuple(args), entries, tuple(nics), tuple(sockets))


# -- launcher side --------------------------------------------------------------------------
def start_switches(
    kv: Any,
    argv: Sequence[str],
    env: Mapping[str, str],
    user: str,
    batchid: str,
    nets: Sequence[str],
    timeout_s: float = SWITCH_WAIT_S,
) -> list[proc.Popen]:
    """Start one switch per network (``argv`` + ``--network NAME``) and wait until each
    has published its address. On failure, stops those already started.

    :raise ServiceUnavailable: a switch exited or did not publish in time
    """
    started: list[proc.Popen] = []
    try:
        for name in nets:
            popen = proc.spawn(
                [*argv, "--job", batchid, "--network", name],
                env=dict(env),
                stdout=None,
                stderr=None,
                new_session=True,
            )
            started.append(popen)
            key = keys.net_switch(user, batchid, name)

            def ready(
                snap: Mapping[str, str], k: str = key, p: Any = popen, name: str = name
            ) -> bool | None:
                if k in snap:
                    return True
                if p.poll() is not None:
                    raise ServiceUnavailable(
                        f"the switch of network '{name}' {proc.ended(p.returncode)}",
                        hint="see its message above",
                    )
                return None

            try:
                kv.wait_for(key, ready, timeout_s, 0.2)
            except TimedOut:
                raise ServiceUnavailable(
                    f"the switch of network '{name}' did not start in {timeout_s:g} s"
                ) from None
    except BaseException:
        stop_switches(started)
        raise
    return started


def stop_switches(switches: Sequence[proc.Popen]) -> None:
    for popen in switches:
        try:
            proc.stop(popen, timeout_s=5)
        except OSError as err:
            log.warning("could not stop a network switch (pid %d): %s", popen.pid, err)


# -- the switch process -------------------------------------------------------------------
def run_switch(
    kv: Any, user: str, batchid: str, net: str, address: str, lease_ttl_s: int, tick_s: float = 0.5
) -> int:
    """Serve network ``net`` of the cluster until the cluster's definition vanishes.

    Binds on ``address`` (a free port), publishes ``address:port`` under its own lease,
    serves the registered ports, and returns 0 when the cluster ends.
    """
    from pcocc.net.switch import Switch, bind_socket, endpoints_from_records

    prefix = keys.cluster_prefix(user, batchid)
    definition = keys.cluster_definition(user, batchid)
    ports_prefix = keys.net_ports_prefix(user, batchid, net)
    try:
        sock = bind_socket(address)
    except OSError as err:
        raise PcoccError(
            f"cannot bind the switch of network '{net}' on {address}: {err.strerror or err}",
            hint=f"set {ADDRESS_HINT}",
        ) from err
    switch = Switch(sock)
    thread = switch.serve_in_thread()
    try:
        host, port = switch.address
        with kv.lease(lease_ttl_s) as lease:
            kv.put(keys.net_switch(user, batchid, net), f"{host}:{port}", lease)
            log.info("switch of network %s on %s:%d", net, host, port)
            last: tuple[tuple[str, str], ...] | None = None

            def watch(snapshot: Mapping[str, str]) -> bool | None:
                nonlocal last
                lease.check()
                if definition not in snapshot:
                    return True
                records = tuple(
                    (k, v) for k, v in sorted(snapshot.items()) if k.startswith(ports_prefix)
                )
                if records != last:
                    switch.set_endpoints(endpoints_from_records(dict(records)))
                    last = records
                return None

            kv.wait_for(prefix, watch, None, tick_s)
        return 0
    finally:
        switch.stop()
        thread.join(2)
        sock.close()


def node_address(env: Mapping[str, str] | None = None) -> str:
    """The address this node publishes for its NICs and switches (see pcocc.netaddr)."""
    from pcocc.netaddr import ADDRESS_VAR, reachable_address

    env = os.environ if env is None else env
    peers = [e for e in env.get(ENDPOINTS_VAR, "").split(",") if e.strip()]
    return reachable_address(peers, env.get(ADDRESS_VAR))
