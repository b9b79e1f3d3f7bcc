"""``ethernet`` networks: the VMs of a job on one layer-2 network made of host bridges,
set up as root on each node of the job by ``pcocc internal setup`` (the Slurm plugin).

This module holds what both sides compute the same way, without running anything: the
settings of networks.yaml (:class:`EthernetNet`), the names of the host devices of a job
(bridge, VXLAN, one TAP per VM), each VM's MAC and address, and the texts given to dnsmasq
and nft. Root's side (creating and removing them) is :mod:`pcocc.net.ethsetup`; the VM's
side (opening its TAP) is :func:`tap_netdev_args`.

Names fit in IFNAMSIZ (15 characters): ``pb<job hex><net id>`` for the bridge,
``pv<job hex><net id>`` for the VXLAN, ``pt<job hex><net id><rank>`` for the TAP of a VM,
where ``net id`` is one hex digit, the position of the network among the admin's ethernet
networks sorted by name (at most 16 of them).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pcocc.errors import ConfigError
from pcocc.net.private import mac_address

log = logging.getLogger(__name__)

TYPE = "ethernet"
MAX_NETWORKS = 16
#: ranks that fit in a TAP name after an 8-digit hex job id
MAX_VMS = 1000
#: VXLAN network ids: 24 bits, 0 reserved
VNI_COUNT = (1 << 24) - 1
_PORTS = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class ReverseNat:
    """Guest TCP port ``vm_port`` of each VM reached on a node port in [low, high]."""

    vm_port: int
    low: int
    high: int


@dataclass(frozen=True)
class EthernetNet:
    """One ethernet network of networks.yaml, checked."""

    name: str
    net_id: int
    cidr: str
    mtu: int = 1500
    vxlan_port: int = 4789
    host_interface: str | None = None
    allow_outbound: bool = False
    reverse_nat: ReverseNat | None = None
    domain: str = "pcocc"
    #: prefix length of the subnet each job gets out of ``cidr``
    job_prefix: int = 24
    #: the networks.yaml cidr, when ``cidr`` is a job's subnet of it
    pool: str | None = None
    #: the job's VXLAN id, taken in the site etcd (:mod:`pcocc.net.netalloc`)
    vni: int | None = None

    def for_job(self, job: int) -> EthernetNet:
        """The network with the subnet that job ``job`` tries first (from the job id; the
        subnet it gets is taken in etcd by :func:`pcocc.net.netalloc.job_network`)."""
        pool = ipaddress.IPv4Network(self.pool or self.cidr)
        count = 1 << (self.job_prefix - pool.prefixlen)
        subnet = ipaddress.IPv4Network(
            (int(pool.network_address) + (job % count) * (1 << (32 - self.job_prefix)),
             self.job_prefix))
        return replace(self, cidr=str(subnet), pool=str(pool))

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def gateway(self) -> str:
        """The bridge's address on every node: the first host of the network."""
        return str(self.network.network_address + 1)

    @property
    def capacity(self) -> int:
        """VMs the network has addresses for (the gateway takes the first host)."""
        return max(0, self.network.num_addresses - 3)

    def address(self, rank: int) -> str:
        if not 0 <= rank < min(self.capacity, MAX_VMS):
            raise ConfigError(f"network '{self.name}' has no address for vm{rank}: a job's"
                              f" subnet (/{self.network.prefixlen}) has room for"
                              f" {min(self.capacity, MAX_VMS)} VMs",
                              hint="ask for fewer VMs, or give the network a shorter"
                                   " job-prefix in networks.yaml")
        return str(self.network.network_address + 2 + rank)


def ethernet_names(networks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The names of the ethernet networks of networks.yaml, in net id order."""
    names = sorted(n for n, s in networks.items() if s.get("type") == TYPE)
    if len(names) > MAX_NETWORKS:
        raise ConfigError(f"networks.yaml defines {len(names)} ethernet networks, at most"
                          f" {MAX_NETWORKS} are supported", hint="remove some")
    return names


def from_config(name: str, settings: Mapping[str, Any], net_id: int) -> EthernetNet:
    """The ethernet network ``name`` of networks.yaml (``net_id``: see :func:`ethernet_names`).

    :raise ConfigError: a setting that the schema lets through but cannot work
    """
    where = f"networks.yaml: network '{name}'"
    try:
        net = ipaddress.IPv4Network(str(settings["cidr"]))
    except ValueError as err:
        raise ConfigError(f"{where}: cidr: {err}", hint="give a network like 10.200.0.0/16")
    job_prefix = int(settings.get("job-prefix", max(24, net.prefixlen)))
    if not net.prefixlen <= job_prefix <= 29:
        raise ConfigError(f"{where}: job-prefix /{job_prefix} does not fit in cidr {net}",
                          hint=f"use a prefix length from {net.prefixlen} to 29")
    rnat = None
    if settings.get("reverse-nat"):
        conf = settings["reverse-nat"]
        match = _PORTS.match(str(conf.get("host-ports", "")))
        low, high = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        if not match or not 1024 <= low <= high <= 65535:
            raise ConfigError(f"{where}: reverse-nat.host-ports {conf.get('host-ports')!r}:"
                              " expected a range like 20000-20999 within 1024-65535")
        rnat = ReverseNat(int(conf.get("vm-port", 22)), low, high)
    domain = str(settings.get("domain", "pcocc"))
    if not _DOMAIN.match(domain):
        raise ConfigError(f"{where}: domain {domain!r} is not a DNS domain",
                          hint="lower-case labels separated by dots, e.g. pcocc.local")
    iface = settings.get("host-interface")
    if iface is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", str(iface)):
        raise ConfigError(f"{where}: host-interface {iface!r} is not an interface name")
    return EthernetNet(
        name=name, net_id=net_id, cidr=str(net),
        mtu=int(settings.get("mtu", 1500)), vxlan_port=int(settings.get("vxlan-port", 4789)),
        host_interface=iface, allow_outbound=bool(settings.get("allow-outbound", False)),
        reverse_nat=rnat, domain=domain, job_prefix=job_prefix,
    )


def all_from_config(networks: Mapping[str, Mapping[str, Any]]) -> list[EthernetNet]:
    """Every ethernet network of networks.yaml, in net id order."""
    return [from_config(n, networks[n], i) for i, n in enumerate(ethernet_names(networks))]


# names and identities -------------------------------------------------------------------
def _tag(job: int, net_id: int) -> str:
    if not 0 < job < 1 << 32 or not 0 <= net_id < MAX_NETWORKS:
        raise ValueError(f"no device name for job {job}, network {net_id}")
    return f"{job:x}{net_id:x}"


def bridge_name(job: int, net_id: int) -> str:
    return f"pb{_tag(job, net_id)}"


def vxlan_name(job: int, net_id: int) -> str:
    return f"pv{_tag(job, net_id)}"


def tap_name(job: int, net_id: int, rank: int) -> str:
    if not 0 <= rank < MAX_VMS:
        raise ValueError(f"no TAP name for vm{rank}")
    return f"pt{_tag(job, net_id)}{rank}"


def table_name(job: int) -> str:
    """The job's nftables tables (one in family inet, one in family bridge)."""
    return f"pcocc_job_{job}"


def vni(job: int, net_id: int) -> int:
    """The VXLAN network id that a job's network tries first (the one it gets is taken in
    etcd by :func:`pcocc.net.netalloc.job_network`)."""
    return ((job << 4 | net_id) % VNI_COUNT) + 1


def vm_mac(job: int, net: EthernetNet, rank: int) -> str:
    return mac_address(str(job), 0x80 | net.net_id, rank)


def vm_name(rank: int) -> str:
    return f"vm{rank}"


# configuration texts -----------------------------------------------------------------------
def dnsmasq_conf(job: int, net: EthernetNet, ranks: Sequence[int], pid_file: str) -> str:
    """dnsmasq's configuration for one network of a job on one node: DHCP with a fixed
    address per VM (by MAC) and DNS for the VMs' names, on the job's bridge only."""
    lines = [
        f"interface={bridge_name(job, net.net_id)}",
        "bind-interfaces",
        "except-interface=lo",
        f"listen-address={net.gateway}",
        f"pid-file={pid_file}",
        "leasefile-ro",  # every address is fixed: no lease database
        "no-hosts",
        "no-resolv" if not net.allow_outbound else "strict-order",
        f"domain={net.domain}",
        f"local=/{net.domain}/",
        "expand-hosts",
        f"dhcp-range={net.address(0)},static,{net.network.netmask},infinite",
        f"dhcp-option=option:mtu,{net.mtu}",
    ]
    if not net.allow_outbound:
        lines.append("dhcp-option=option:router")  # no default route: nothing goes out
    for rank in ranks:
        name = vm_name(rank)
        lines.append(f"dhcp-host={vm_mac(job, net, rank)},{net.address(rank)},{name}")
        lines.append(f"host-record={name},{name}.{net.domain},{net.address(rank)}")
    return "\n".join(lines) + "\n"


def nft_ruleset(job: int, nets: Sequence[EthernetNet],
                forwards: Sequence[tuple[EthernetNet, int, int]],
                vxlans: Sequence[EthernetNet], *, uid: int, peers: Sequence[str] = ()) -> str:
    """The job's nftables tables: outbound NAT (``allow-outbound``), reverse NAT
    (``forwards``: (network, rank, host port); from this node, only for the job's user
    ``uid`` and root), and, on the bridges, the gateway kept local to each node (ARP for
    it and DHCP do not cross the VXLAN: every node serves its VMs). The job's VXLAN
    packets (by VNI) are taken only from ``peers`` (its other nodes) and may be sent by
    no user's socket, only by the kernel's tunnel: nobody else puts frames on the job's
    bridges."""
    table = table_name(job)
    # answers of what the rules below let through (reverse NAT, outbound)
    pre, out, post, fwd = [], [], [], ["ct state established,related accept"]
    l_in, l_out = [], []
    for net, rank, port in forwards:
        assert net.reverse_nat is not None
        target = f"{net.address(rank)}:{net.reverse_nat.vm_port}"
        pre.append(f"tcp dport {port} fib daddr type local dnat ip to {target}")
        out.append(f"tcp dport {port} fib daddr type local meta skuid {{ 0, {uid} }}"
                   f" dnat ip to {target}")
        fwd.append(f"ip daddr {net.address(rank)} tcp dport {net.reverse_nat.vm_port}"
                   f" ct status dnat accept")
    for net in nets:
        br = bridge_name(job, net.net_id)
        if net.reverse_nat:  # VMs without a route out answer through the gateway
            post.append(f"oifname \"{br}\" ct status dnat masquerade")
        fwd.append(f"iifname \"{br}\" oifname \"{br}\" accept")
        if net.allow_outbound:
            post.append(f"ip saddr {net.cidr} ip daddr != {net.cidr} masquerade")
            fwd.append(f"iifname \"{br}\" ip saddr {net.cidr} accept")
        fwd.append(f"iifname \"{br}\" drop")
        fwd.append(f"oifname \"{br}\" drop")
    for net in vxlans:  # the VNI is bits 32-55 of the VXLAN header, after UDP's 8 bytes
        match = f"udp dport {net.vxlan_port} @th,96,24 {net.vni}"
        l_in.append(f"{match} ip saddr != {{ {', '.join(peers)} }} drop")
        l_out.append(f"{match} meta skuid != 0 drop")
    text = [f"table inet {table} {{",
            f" chain job_pre {{ type nat hook prerouting priority dstnat; {_rules(pre)} }}",
            f" chain job_out {{ type nat hook output priority -100; {_rules(out)} }}",
            f" chain job_post {{ type nat hook postrouting priority srcnat; {_rules(post)} }}",
            f" chain job_fwd {{ type filter hook forward priority filter; {_rules(fwd)} }}",
            f" chain job_lin {{ type filter hook input priority filter; {_rules(l_in)} }}",
            f" chain job_lout {{ type filter hook output priority filter; {_rules(l_out)} }}",
            "}"]
    if vxlans:
        b_in, b_out, b_fwd = [], [], []
        for net in vxlans:
            vx = vxlan_name(job, net.net_id)
            b_in += [f"iifname \"{vx}\" arp daddr ip {net.gateway} drop",
                     f"iifname \"{vx}\" udp dport {{ 53, 67 }} drop"]
            b_out += [f"oifname \"{vx}\" arp saddr ip {net.gateway} drop",
                      f"oifname \"{vx}\" udp sport {{ 53, 67 }} drop"]
            b_fwd += [f"oifname \"{vx}\" arp daddr ip {net.gateway} drop",
                      f"oifname \"{vx}\" udp dport {{ 53, 67 }} drop"]
        text += [f"table bridge {table} {{",
                 f" chain job_in {{ type filter hook input priority filter; {_rules(b_in)} }}",
                 f" chain job_out {{ type filter hook output priority filter; {_rules(b_out)} }}",
                 f" chain job_fwd {{ type filter hook forward priority filter; {_rules(b_fwd)} }}",
                 "}"]
    return "\n".join(text) + "\n"


def _rules(rules: Sequence[str]) -> str:
    return "".join(f"\n  {r}" for r in rules) + "\n"


# the VM's side -----------------------------------------------------------------------------
def tap_netdev_args(job: int, net: EthernetNet, rank: int, index: int, nic_model: str,
                    vhost: bool) -> list[str]:
    """QEMU arguments that open the VM's TAP (made by root, owned by the job's user)."""
    netdev = (f"tap,id=eth{index},ifname={tap_name(job, net.net_id, rank)},"
              "script=no,downscript=no")
    if vhost:
        netdev += ",vhost=on"
    device = f"{nic_model},netdev=eth{index},mac={vm_mac(job, net, rank)}"
    if net.mtu != 1500:
        device += f",host_mtu={net.mtu}"
    return ["-netdev", netdev, "-device", device]


_vhost_said = False


def vhost_usable(path: str = "/dev/vhost-net") -> bool:
    """Whether this user can open vhost-net (in-kernel virtio-net backend for the TAP);
    says once per process when it cannot and QEMU falls back to its userspace backend."""
    global _vhost_said
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError as err:
        if not _vhost_said:
            log.warning("%s: %s: ethernet NICs use QEMU's userspace virtio-net backend"
                        " (slower); an admin can give users access to %s",
                        path, err.strerror, path)
            _vhost_said = True
        return False
