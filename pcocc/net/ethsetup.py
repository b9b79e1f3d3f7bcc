"""Root's side of ethernet networks on one node: create and remove the devices, dnsmasq and
nftables tables of a job (names and texts come from :mod:`pcocc.net.ethernet`).

:mod:`pcocc.net.jobsetup` records each resource before it calls the function that creates
it, and calls :func:`remove` for each recorded one in reverse order; every remover does
nothing when its resource is already gone, so cleanup can be repeated.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from pcocc import proc
from pcocc.errors import ConfigError
from pcocc.net import ethernet
from pcocc.net.ethernet import EthernetNet

log = logging.getLogger(__name__)


def link_exists(name: str) -> bool:
    return proc.run(["ip", "link", "show", "dev", name], check=False, timeout_s=30).returncode == 0


def _ip(*args: str, what: str) -> None:
    proc.run(["ip", *args], what=what, timeout_s=30)


def check_forwarding(nets: list[EthernetNet], path: str = "/proc/sys/net/ipv4/ip_forward",
                     ) -> None:
    """Reverse NAT and outbound NAT route packets between the node's network and the
    bridge: the node must forward IPv4 (an admin's choice, which pcocc does not change).

    :raise ConfigError: a network needs it and the node (its network namespace) does not
    """
    needing = [n.name for n in nets if n.reverse_nat or n.allow_outbound]
    if not needing:
        return
    with open(path) as f:
        if f.read().strip() == "1":
            return
    raise ConfigError(
        f"network '{needing[0]}' (networks.yaml) has reverse-nat or allow-outbound, which"
        " need IPv4 forwarding on the node, and net.ipv4.ip_forward is 0 here",
        hint="set net.ipv4.ip_forward=1 on the compute nodes (sysctl.d), or remove"
             " reverse-nat and allow-outbound from the network")


def add_bridge(job: int, net: EthernetNet) -> None:
    br = ethernet.bridge_name(job, net.net_id)
    _ip("link", "add", "name", br, "type", "bridge", what=f"create bridge {br}")
    _ip("link", "set", "dev", br, "mtu", str(net.mtu), what=f"set the MTU of {br}")
    _ip("addr", "add", f"{net.gateway}/{net.network.prefixlen}", "dev", br,
        what=f"give {br} its address")
    _ip("link", "set", "dev", br, "up", what=f"bring up {br}")


def add_vxlan(job: int, net: EthernetNet, peers: list[str]) -> None:
    """The job's tunnel to its other nodes: every broadcast goes to each peer (static
    flood list, no multicast), unicast follows what the bridge learns."""
    vx = ethernet.vxlan_name(job, net.net_id)
    if net.vni is None:
        raise ValueError(f"network '{net.name}' has no VNI allocated")
    argv = ["link", "add", vx, "type", "vxlan", "id", str(net.vni),
            "dstport", str(net.vxlan_port)]
    if net.host_interface:
        argv += ["dev", net.host_interface]
    _ip(*argv, what=f"create VXLAN {vx}")
    for peer in peers:
        proc.run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", peer],
                 what=f"add {peer} to the flood list of {vx}", timeout_s=30)
    _ip("link", "set", "dev", vx, "mtu", str(net.mtu), what=f"set the MTU of {vx}")
    _ip("link", "set", "dev", vx, "master", ethernet.bridge_name(job, net.net_id), "up",
        what=f"attach {vx} to its bridge")


def add_tap(job: int, net: EthernetNet, rank: int, uid: int) -> None:
    """The TAP of VM ``rank``, owned by the job's user: QEMU opens it without privilege."""
    tap = ethernet.tap_name(job, net.net_id, rank)
    _ip("tuntap", "add", "dev", tap, "mode", "tap", "user", str(uid), "vnet_hdr",
        what=f"create TAP {tap}")
    _ip("link", "set", "dev", tap, "mtu", str(net.mtu), what=f"set the MTU of {tap}")
    _ip("link", "set", "dev", tap, "master", ethernet.bridge_name(job, net.net_id), "up",
        what=f"attach {tap} to its bridge")


def start_dnsmasq(conf: Path) -> None:
    """dnsmasq on ``conf`` (it writes its pid file, named in ``conf``, and detaches)."""
    proc.run(["dnsmasq", f"--conf-file={conf}"], what="start dnsmasq", timeout_s=30)


def load_nft(path: Path) -> None:
    proc.run(["nft", "-f", str(path)], what=f"load the nftables rules {path}", timeout_s=30)


def _read_pid(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        text = f.read(32).strip()
    return int(text) if text.isdigit() and 1 < int(text) < 1 << 22 else None


def _is_ours(pid: int, conf: Path) -> bool:
    """The process is a dnsmasq started on ``conf`` (pids are reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--conf-file={conf}".encode() in argv and os.path.basename(argv[0]) == b"dnsmasq"


def stop_dnsmasq(conf: Path, pid_file: Path) -> None:
    pid = _read_pid(pid_file)
    if pid is None or not _is_ours(pid, conf):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _is_ours(pid, conf) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_ours(pid, conf):
        os.kill(pid, signal.SIGKILL)


def delete_table(family: str, name: str) -> None:
    if proc.run(["nft", "list", "table", family, name], check=False,
                timeout_s=30).returncode == 0:
        proc.run(["nft", "delete", "table", family, name], what=f"delete nft table {name}",
                 timeout_s=30)


def delete_link(name: str) -> None:
    if link_exists(name):
        _ip("link", "delete", "dev", name, what=f"delete {name}")


def bindable(port: int) -> bool:
    """Whether nothing listens on TCP ``port`` of this node now."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def forwards_by_net(forwards: Mapping[str, Mapping[int, int]],
                    nets: Mapping[str, EthernetNet]) -> list[tuple[EthernetNet, int, int]]:
    return [(nets[name], rank, port) for name, ports in forwards.items()
            for rank, port in sorted(ports.items())]
