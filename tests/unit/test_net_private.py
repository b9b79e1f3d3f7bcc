"""Private networks: addresses, MACs, QEMU arguments, guest configuration, definitions."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from pcocc.cluster.definition import ClusterDefinition, build_definition
from pcocc.errors import ConfigError, ServiceUnavailable, UsageError
from pcocc.kv import keys
from pcocc.net import private
from pcocc.net.private import PrivateNet, cluster_networks

from tests.fixtures.memkv import MemoryKv

NETS = {
    "nat": {"type": "user"},
    "cluster": {"type": "private", "cidr": "192.168.7.0/24", "mtu": 1400},
    "tiny": {"type": "private", "cidr": "10.9.0.0/30"},
}


def templates(networks):
    return {"t": {"kernel": "/k", "resources": {"cores": 1, "networks": networks}}}


def test_addresses_come_from_the_cidr():
    net = PrivateNet.from_config("cluster", NETS["cluster"])
    assert (net.cidr, net.mtu, net.capacity) == ("192.168.7.0/24", 1400, 254)
    assert net.interface(0) == "192.168.7.1/24"
    assert net.address(253) == "192.168.7.254"
    with pytest.raises(
        UsageError, match=r"network 'cluster' \(192.168.7.0/24\) has room for 254 VMs, not 255"
    ):
        net.interface(254)


def test_defaults():
    net = PrivateNet.from_config("p", {"type": "private"})
    assert (net.cidr, net.mtu) == (private.DEFAULT_CIDR, private.DEFAULT_MTU)


@pytest.mark.parametrize(
    "cidr, message",
    [
        ("10.252.0.1/16", "cidr '10.252.0.1/16' is not an IPv4 network"),
        ("300.1.0.0/16", "cidr '300.1.0.0/16' is not an IPv4 network"),
        ("10.0.0.0/33", "cidr '10.0.0.0/33' is not an IPv4 network"),
        ("10.0.0.0/31", "cidr '10.0.0.0/31' has no room for VMs"),
    ],
)
def test_bad_cidr(cidr, message):
    with pytest.raises(
        ConfigError, match=f"network 'bad': {message}".replace("(", r"\(").replace(")", r"\)")
    ):
        PrivateNet.from_config("bad", {"type": "private", "cidr": cidr})


def test_cluster_networks_keep_the_order_of_use_and_check_the_size():
    nets = cluster_networks([["nat", "cluster"], ["cluster", "tiny"]], NETS)
    assert list(nets) == ["cluster", "tiny"]
    with pytest.raises(
        UsageError, match=r"network 'tiny' \(10.9.0.0/30\) has room for 2 VMs, not 3"
    ):
        cluster_networks([["tiny"], ["nat"], ["nat"]], NETS)
    assert cluster_networks([["nat"]], NETS) == {}


def test_definition_uses_the_private_cidr_for_hosts_and_round_trips():
    d = build_definition("t:3", templates(["nat", "cluster"]), networks=NETS)
    assert d.hosts_entries() == {"vm0": "192.168.7.1", "vm1": "192.168.7.2", "vm2": "192.168.7.3"}
    assert d.networks == {"cluster": {"type": "private", "cidr": "192.168.7.0/24", "mtu": 1400}}
    again = ClusterDefinition.from_json(d.to_json())
    assert again.networks == d.networks and again.hosts_entries() == d.hosts_entries()
    plain = build_definition("t:2", templates(["nat"]), networks=NETS)
    assert plain.hosts_entries() == {"vm0": "10.252.0.1", "vm1": "10.252.0.2"}
    assert plain.networks == {}


def test_definition_refuses_too_many_vms_for_the_cidr():
    with pytest.raises(
        UsageError, match=r"network 'tiny' \(10.9.0.0/30\) has room for 2 VMs, not 3"
    ):
        build_definition("t:3", templates(["tiny"]), networks=NETS)


def test_macs_are_stable_unique_and_locally_administered():
    macs = {private.mac_address("42", i, r) for i in range(3) for r in range(300)}
    assert len(macs) == 900
    mac = private.mac_address("42", 1, 258)
    assert mac == private.mac_address("42", 1, 258)
    first = int(mac[:2], 16)
    assert first & 2 and not first & 1
    assert mac.endswith(":01:00:01:02")


def test_netdev_args():
    nic = private.Nic("cluster", "02:11:00:00:00:01", "10.252.0.2/16", 1450)
    args = private.netdev_args(0, nic, 7, "virtio-net-pci")
    assert args == [
        "-netdev",
        "dgram,id=priv0,local.type=fd,local.str=7",
        "-device",
        "virtio-net-pci,netdev=priv0,mac=02:11:00:00:00:01",
    ]


def test_guest_configuration():
    nets = {"cluster": PrivateNet("cluster", "192.168.7.0/24", 1400)}
    nics = private.vm_nics(nets, ["nat", "cluster"], "7", 4)
    assert [(n.net, n.interface, n.mtu) for n in nics] == [("cluster", "192.168.7.5/24", 1400)]
    files = private.seed_files(nics, dhcp_macs=[private.QEMU_DEFAULT_MAC])
    config = yaml.safe_load(files["network-config"])
    assert config["version"] == 2
    eth = config["ethernets"]
    assert eth["nat0"] == {"match": {"macaddress": private.QEMU_DEFAULT_MAC}, "dhcp4": True}
    assert eth["priv0"] == {
        "match": {"macaddress": nics[0].mac},
        "addresses": ["192.168.7.5/24"],
        "mtu": 1400,
        "dhcp4": False,
    }
    assert files["pcocc/net"] == f"{nics[0].mac} 192.168.7.5/24 1400\n"
    assert private.seed_files([]) == {}


def test_prepare_nics_waits_for_the_switch_and_registers_the_port():
    import socket

    kv = MemoryKv()
    nets = {"cluster": PrivateNet("cluster", "10.252.0.0/16")}
    switch_key = keys.net_switch("u", "7", "cluster")
    switch = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    switch.bind(("127.0.0.1", 0))
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind(("127.0.0.1", 0))
    switch_at = switch.getsockname()

    def publish_later():
        time.sleep(0.3)
        kv.put(switch_key, f"127.0.0.1:{switch_at[1]}")

    threading.Thread(target=publish_later).start()
    setup = private.prepare_nics(kv, "u", "7", nets, ["cluster"], 1, "127.0.0.1", timeout_s=10)
    try:
        (sock,) = setup.sockets
        assert sock.getpeername() == switch_at
        # the kernel delivers to the NIC's socket only what the switch sends
        intruder.sendto(b"injected", sock.getsockname())
        switch.sendto(b"from the switch", sock.getsockname())
        sock.settimeout(2)
        assert sock.recv(100) == b"from the switch"
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert setup.pass_fds == (sock.fileno(),)
        assert setup.qemu_args[1] == f"dgram,id=priv0,local.type=fd,local.str={sock.fileno()}"
        ((key, value),) = setup.kv_entries.items()
        assert key == keys.net_port("u", "7", "cluster", 1)
        record = json.loads(value)
        assert (record["host"], record["port"]) == sock.getsockname()
        assert record["mac"] == private.mac_address("7", 0, 1)
    finally:
        setup.close()
        switch.close()
        intruder.close()
    assert sock.fileno() == -1


def test_prepare_nics_names_the_missing_switch():
    nets = {"cluster": PrivateNet("cluster", "10.252.0.0/16")}
    with pytest.raises(
        ServiceUnavailable, match="vm0: the switch of network 'cluster' did not start"
    ):
        private.prepare_nics(MemoryKv(), "u", "7", nets, ["cluster"], 0, "127.0.0.1", timeout_s=0.3)


def test_keys_of_private_networks_parse_back():
    from pcocc.kv import keys as kv_keys

    key = keys.net_port("alice", "12", "cluster", 3)
    assert key == "/pcocc/users/alice/clusters/12/nets/cluster/ports/3"
    assert key.startswith(keys.net_ports_prefix("alice", "12", "cluster"))
    assert kv_keys.parse_cluster_key(key).rank == 3
    assert kv_keys.parse_cluster_key(key).kind == "net_port"
    parsed = kv_keys.parse_cluster_key(keys.net_switch("alice", "12", "cluster"))
    assert (parsed.kind, parsed.net) == ("net_switch", "cluster")
    with pytest.raises(UsageError):
        keys.net_prefix("alice", "12", "a/b")


def test_run_switch_serves_registered_ports_until_the_cluster_ends():
    import socket

    kv = MemoryKv()
    kv.put(keys.cluster_definition("u", "7"), "{}")
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "status", private.run_switch(kv, "u", "7", "cluster", "127.0.0.1", 30, tick_s=0.05)
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while kv.get(keys.net_switch("u", "7", "cluster")) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    switch = private.parse_switch_record(kv.get(keys.net_switch("u", "7", "cluster")))
    socks = []
    for rank in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        socks.append(s)
    for rank, s in enumerate(socks[:2]):  # the third one is not registered
        record = {"host": "127.0.0.1", "port": s.getsockname()[1], "mac": f"02:00:00:00:00:0{rank}"}
        kv.put(keys.net_port("u", "7", "cluster", rank), json.dumps(record))
    frame = bytes.fromhex("ffffffffffff0200000000000806") + b"arp?"
    got = None
    while got is None and time.monotonic() < deadline:  # until the switch saw the records
        socks[0].sendto(frame, switch)
        try:
            got = socks[1].recvfrom(2048)[0]
        except TimeoutError:
            pass
    assert got == frame
    socks[2].sendto(bytes.fromhex("0200000000010200000000090800") + b"x", switch)
    socks[1].settimeout(0.5)
    with pytest.raises(TimeoutError):
        socks[1].recvfrom(2048)
    kv.delete_prefix(keys.cluster_prefix("u", "7"))
    thread.join(10)
    assert result == {"status": 0}
    assert kv.get_prefix(keys.cluster_prefix("u", "7")) == {}
    for s in socks:
        s.close()


def test_bad_node_addresses_are_named():
    from pcocc.errors import PcoccError

    kv = MemoryKv()
    kv.put(keys.cluster_definition("u", "7"), "{}")
    with pytest.raises(
        PcoccError, match="cannot bind the switch of network 'cluster' on 192.0.2.77"
    ):
        private.run_switch(kv, "u", "7", "cluster", "192.0.2.77", 30)
    kv.put(keys.net_switch("u", "7", "cluster"), "127.0.0.1:9")
    nets = {"cluster": PrivateNet("cluster", "10.252.0.0/16")}
    with pytest.raises(PcoccError, match="vm0: cannot open a port on 192.0.2.77") as exc:
        private.prepare_nics(kv, "u", "7", nets, ["cluster"], 0, "192.0.2.77", timeout_s=1)
    assert "PCOCC_NODE_ADDRESS" in exc.value.hint
